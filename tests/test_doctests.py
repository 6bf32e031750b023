"""Runs every ``>>>`` example in the package's docstrings."""

import doctest
import importlib
import pkgutil

import pytest

import jaxprune


def _modules():
  names = ["jaxprune"]
  for info in pkgutil.walk_packages(jaxprune.__path__, "jaxprune."):
    names.append(info.name)
  return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
