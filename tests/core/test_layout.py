"""The private/public line: no subpackage imports another subpackage's private module."""

import pathlib
import re

import jaxprune

PACKAGE = pathlib.Path(jaxprune.__file__).parent
# `from jaxprune.a._x import ...`, `import jaxprune.a._x`, `from jaxprune.a import _x`.
IMPORTS = re.compile(
    r"^\s*(?:from\s+jaxprune\.(\w+)\.(_\w+)[\s.]|import\s+jaxprune\.(\w+)\.(_\w+)"
    r"|from\s+jaxprune\.(\w+)\s+import\s+\(?\s*(_\w+))", re.M)

# Offenders in areas other helpers own, fixed on their branches; the lead removes each entry
# when its fix is merged (an entry that no longer occurs fails the test, so none is forgotten).
KNOWN: set[str] = set()


def private_imports():
  """``"<file> -> <area>._<module>"`` for every import of another area's private module."""
  found = set()
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE)
    area = rel.parts[0] if len(rel.parts) > 1 else None
    for match in IMPORTS.finditer(path.read_text()):
      groups = [g for g in match.groups() if g]
      other, module = groups[0], groups[1]
      if other != area:
        found.add(f"{rel.as_posix()} -> {other}.{module}")
  return found


def test_no_cross_package_private_imports():
  found = private_imports()
  new = sorted(found - KNOWN)
  assert not new, ("imports of another area's private module (make what is shared public in "
                   f"its area, or move it to jaxprune.core): {new}")
  fixed = sorted(KNOWN - found)
  assert not fixed, f"fixed: remove these entries from KNOWN in {__file__}: {fixed}"


def test_the_grep_finds_what_it_should():
  text = "from jaxprune.masks._search import top_k\nfrom jaxprune.scores import _hessian as h\n"
  assert [m.groups() for m in IMPORTS.finditer(text)] == [
      ("masks", "_search", None, None, None, None), (None, None, None, None, "scores", "_hessian")]
  assert not list(IMPORTS.finditer("from jaxprune.masks import top_k\n"))
