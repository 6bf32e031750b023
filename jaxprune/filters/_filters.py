"""Leaf filters: which leaves of a pytree are pruned.

A filter is called as ``filter(path, leaf) -> bool`` on array leaves. ``where=`` arguments accept
a callable, a regex string (searched in the path), a list of those (any of them), or ``None``
(the default filter). Filters combine with ``&``, ``|`` and ``~``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Union

import numpy as np  # noqa: F401  (used in doctests)

from jaxprune.core import flatten_with_paths, is_array, listing

FilterLike = Union[None, str, Callable[[str, Any], bool], "Filter", list, tuple]


@dataclasses.dataclass(frozen=True)
class Filter:
  """A named ``(path, leaf) -> bool`` predicate that composes with ``&``, ``|`` and ``~``.

  >>> f = regex("kernel") & min_ndim(2)
  >>> f("dense/kernel", np.zeros((2, 3))), f("dense/bias", np.zeros(3))
  (True, False)
  """

  fn: Callable[[str, Any], bool]
  name: str

  def __call__(self, path: str, leaf) -> bool:
    return bool(self.fn(path, leaf))

  def __and__(self, other: FilterLike) -> "Filter":
    return all_of(self, other)

  def __or__(self, other: FilterLike) -> "Filter":
    return any_of(self, other)

  def __invert__(self) -> "Filter":
    return not_(self)

  def __repr__(self) -> str:
    return self.name


def min_ndim(n: int) -> Filter:
  """Array leaves with at least ``n`` dimensions.

  >>> import numpy as np
  >>> min_ndim(2)("w", np.zeros((2, 3))), min_ndim(2)("b", np.zeros(3))
  (True, False)
  """
  return Filter(lambda path, leaf: is_array(leaf) and leaf.ndim >= n, f"min_ndim({n})")


def min_size(n: int) -> Filter:
  """Array leaves with at least ``n`` elements.

  >>> import numpy as np
  >>> min_size(4)("w", np.zeros((2, 2))), min_size(4)("b", np.zeros(3))
  (True, False)
  """
  return Filter(lambda path, leaf: is_array(leaf) and leaf.size >= n, f"min_size({n})")


def regex(pattern: str) -> Filter:
  """Leaves whose path matches ``pattern`` anywhere (``re.search``).

  >>> import numpy as np
  >>> f = regex("layers/[0-9]+/kernel")
  >>> f("layers/0/kernel", np.zeros((2, 2))), f("head/kernel", np.zeros((2, 2)))
  (True, False)
  """
  try:
    compiled = re.compile(pattern)
  except re.error as err:
    raise ValueError(f"where={pattern!r} is not a valid regular expression: {err}.") from None
  return Filter(lambda path, leaf: compiled.search(path) is not None, f"regex({pattern!r})")


def all_of(*filters: FilterLike) -> Filter:
  """Leaves selected by every filter.

  >>> import numpy as np
  >>> f = all_of(regex("kernel"), min_size(4))
  >>> f("dense/kernel", np.zeros((2, 2))), f("dense/kernel", np.zeros(2))
  (True, False)
  """
  fs = [resolve(f) for f in filters]
  return Filter(lambda p, x: all(f(p, x) for f in fs), "(" + " & ".join(map(repr, fs)) + ")")


def any_of(*filters: FilterLike) -> Filter:
  """Leaves selected by at least one filter.

  >>> import numpy as np
  >>> f = any_of(regex("embed"), min_ndim(2))
  >>> f("embed", np.zeros(3)), f("dense/bias", np.zeros(3))
  (True, False)
  """
  fs = [resolve(f) for f in filters]
  return Filter(lambda p, x: any(f(p, x) for f in fs), "(" + " | ".join(map(repr, fs)) + ")")


def not_(f: FilterLike) -> Filter:
  """Leaves not selected by ``f``.

  >>> import numpy as np
  >>> f = not_(regex("head"))
  >>> f("head/kernel", np.zeros((2, 2))), f("body/kernel", np.zeros((2, 2)))
  (False, True)
  """
  g = resolve(f)
  return Filter(lambda p, x: not g(p, x), f"~{g!r}")


everything = Filter(lambda path, leaf: is_array(leaf), "everything")
nothing = Filter(lambda path, leaf: False, "nothing")
default = min_ndim(2)  # the default filter: kernels and embeddings, never biases or norms


def resolve(where: FilterLike) -> Filter:
  """Turns any accepted ``where=`` value into a :class:`Filter`.

  >>> resolve("conv.*kernel")
  regex('conv.*kernel')
  """
  if where is None:
    return default
  if isinstance(where, Filter):
    return where
  if isinstance(where, str):
    return regex(where)
  if isinstance(where, (list, tuple)):
    return any_of(*where)
  if callable(where):
    return Filter(where, getattr(where, "__name__", repr(where)))
  raise TypeError(
      f"where= must be None, a regex string, a callable (path, leaf) -> bool, a "
      f"jaxprune.filters.Filter or a list of those; got {type(where).__name__}: {where!r}.")


def select(tree, where: FilterLike = None, *, allow_empty: bool = False) -> list[bool]:
  """One bool per leaf of ``tree`` (flattening order): is it selected by ``where``?

  Only array leaves can be selected. Raises a ``ValueError`` listing the paths seen when
  nothing is selected, unless ``allow_empty``.

  >>> select({"w": np.zeros((2, 2)), "b": np.zeros(2)})
  [False, True]
  """
  f = resolve(where)
  paths, leaves, _ = flatten_with_paths(tree)
  chosen = [is_array(x) and f(p, x) for p, x in zip(paths, leaves)]
  if not any(chosen) and not allow_empty:
    shapes = [f"{p}: {tuple(x.shape)}" if is_array(x) else f"{p}: {type(x).__name__}"
              for p, x in zip(paths, leaves)]
    raise ValueError(
        f"where={f!r} selected no leaf. Leaves seen (path: shape): {listing(shapes)}. "
        "Pass a regex matching one of these paths, or a callable (path, leaf) -> bool.")
  return chosen
