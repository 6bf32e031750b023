"""Helpers that build clear error messages: what was expected, what was got, where, how to fix."""

from __future__ import annotations


def describe(value) -> str:
  """A short description of a value for error messages.

  >>> import numpy as np
  >>> describe(np.ones((2, 3), np.float32))
  'ndarray(shape=(2, 3), dtype=float32)'
  """
  shape = getattr(value, "shape", None)
  dtype = getattr(value, "dtype", None)
  if shape is not None and dtype is not None:
    return f"{type(value).__name__}(shape={tuple(shape)}, dtype={dtype})"
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def at_path(path: str) -> str:
  """Formats a leaf path for messages (the root is shown as ``<root>``).

  >>> at_path("dense/kernel"), at_path("")
  ("'dense/kernel'", '<root>')
  """
  return f"'{path}'" if path else "<root>"


def listing(paths, limit: int = 20) -> str:
  """Formats a list of paths, truncated after ``limit`` entries.

  >>> listing(["a", "b", "c"], limit=2)
  "['a', 'b', ... (1 more)]"
  """
  paths = list(paths)
  shown = ", ".join(repr(p) for p in paths[:limit])
  more = f", ... ({len(paths) - limit} more)" if len(paths) > limit else ""
  return f"[{shown}{more}]"
