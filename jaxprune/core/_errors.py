"""Helpers that build clear error messages: what was expected, what was got, where, how to fix."""

from __future__ import annotations


def describe(value) -> str:
  """A short description of a value for error messages."""
  shape = getattr(value, "shape", None)
  dtype = getattr(value, "dtype", None)
  if shape is not None and dtype is not None:
    return f"{type(value).__name__}(shape={tuple(shape)}, dtype={dtype})"
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def at_path(path: str) -> str:
  """Formats a leaf path for messages (the root is shown as ``<root>``)."""
  return f"'{path}'" if path else "<root>"


def listing(paths, limit: int = 20) -> str:
  """Formats a list of paths, truncated after ``limit`` entries."""
  paths = list(paths)
  shown = ", ".join(repr(p) for p in paths[:limit])
  more = f", ... ({len(paths) - limit} more)" if len(paths) > limit else ""
  return f"[{shown}{more}]"
