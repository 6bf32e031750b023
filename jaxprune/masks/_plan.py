"""Lines up scores, sparsities, filters and previous masks leaf by leaf (static checks only)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxprune import filters
from jaxprune.core import (
    as_mask_leaf, at_path, check_sparsity, describe, flatten_with_paths, is_array, is_floating,
    is_static_number, leaves_like)



@dataclasses.dataclass(frozen=True)
class Leaf:
  """One pruned leaf: its path, scores, sparsity (float or 0-d array) and eligible entries."""

  path: str
  score: Any
  sparsity: Any
  eligible: Any  # None (all eligible) or a bool array


def is_scalar_sparsity(sparsity) -> bool:
  """True when ``sparsity`` is one number (static or a 0-d traced array), not a pytree."""
  return is_static_number(sparsity) or (is_array(sparsity) and sparsity.ndim == 0)


def plan(scores, sparsity, where=None, previous=None) -> tuple[list[Leaf | None], Any]:
  """Per leaf of ``scores``: a :class:`Leaf` when it is pruned, else ``None``; and the treedef."""
  paths, leaves, treedef = flatten_with_paths(scores)
  if is_scalar_sparsity(sparsity):
    chosen = filters.select(scores, where)
    values = [sparsity if c else None for c in chosen]
  else:
    values = leaves_like(scores, sparsity, name="sparsity", ref_name="scores")
    if where is not None:
      chosen = filters.select(scores, where)
      values = [v if c else None for v, c in zip(values, chosen)]
    if all(v is None for v in values):
      raise ValueError(
          "sparsity selects no leaf: every entry is None. Give a float for the leaves to prune, "
          "e.g. jaxprune.allocate.uniform(params, 0.9).")
  prev = [None] * len(leaves) if previous is None else leaves_like(
      scores, previous, name="previous", ref_name="scores")
  out = []
  for path, leaf, value, old in zip(paths, leaves, values, prev):
    if value is None:
      out.append(None)
      continue
    check_score(path, leaf)
    out.append(Leaf(path, leaf, check_sparsity(value, path), check_previous(path, leaf, old)))
  return out, treedef


def check_score(path: str, leaf) -> None:
  """Scores of a pruned leaf must be a floating array."""
  if not is_array(leaf):
    raise TypeError(
        f"scores at {at_path(path)} must be an array to be pruned; got {describe(leaf)}. "
        "Exclude this leaf with where=.")
  if not is_floating(leaf):
    raise TypeError(
        f"scores at {at_path(path)} have dtype {leaf.dtype}; scores must be floating "
        "(float16, bfloat16, float32 or float64). Cast them with .astype(jnp.float32).")


def check_previous(path: str, leaf, old):
  """A previous mask is None (nothing pruned yet) or a bool array shaped like the scores."""
  if old is None:
    return None
  return as_mask_leaf(path, old, leaf, what="previous mask", like_name="scores")


def size(leaf) -> int:
  return int(np.prod(leaf.shape, dtype=np.int64))


def unflatten(treedef, masks):
  return treedef.unflatten(masks)
