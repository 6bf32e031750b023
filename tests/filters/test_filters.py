"""where= filters: the default, regex, callables, combinators, errors."""

import numpy as np
import pytest

from jaxprune import filters


def test_default_filter_prunes_only_matrices():
  params = {"k": np.ones((2, 3)), "b": np.ones(3), "s": np.float32(1.0), "e": np.ones((2, 2, 2))}
  assert filters.select(params) == [False, True, True, False]


def test_filter_matching_nothing_lists_the_paths():
  with pytest.raises(ValueError, match=r"selected no leaf.*'enc/kernel: \(2, 2\)'"):
    filters.select({"enc": {"kernel": np.ones((2, 2))}}, "decoder")


def test_bad_where_type_and_bad_regex():
  with pytest.raises(TypeError, match="where= must be"):
    filters.resolve(3)
  with pytest.raises(ValueError, match="not a valid regular expression"):
    filters.resolve("(")
