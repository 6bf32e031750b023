"""The docs site's pages: their ``>>>`` examples run (the Sphinx build itself is a CI stage)."""

import doctest
import pathlib

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_docs_page_examples_run(page):
  result = doctest.testfile(str(DOCS / page), module_relative=False,
                            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} example(s) failed in docs/{page}"


def test_every_public_area_has_a_page():
  import jaxprune
  areas = {name for name in jaxprune.__all__
           if type(getattr(jaxprune, name)).__name__ == "module"}
  pages = {p.stem for p in (DOCS / "api").glob("*.rst")}
  assert areas <= pages, f"areas without a docs/api page: {sorted(areas - pages)}"
