"""Applying masks to parameters."""

from __future__ import annotations

import jax.numpy as jnp

from jaxprune.core import as_mask_leaf, flatten_with_paths, leaves_like


def apply_masks(params, masks):
  """Zeroes the pruned entries of ``params``: exactly 0, also where a weight is inf or NaN.

  Leaves whose mask is ``None`` are returned untouched; dtypes and shapes are kept.

  Args:
    params: any pytree.
    masks: pytree like ``params`` with a bool array (True = kept) or ``None`` per leaf.

  >>> import jax.numpy as jnp
  >>> apply_masks({"w": jnp.array([1., jnp.nan]), "b": 3.0}, {"w": jnp.array([True, False]),
  ...             "b": None})["w"].tolist()
  [1.0, 0.0]
  """
  paths, leaves, treedef = flatten_with_paths(params)
  mask_leaves = leaves_like(params, masks, name="masks")
  return treedef.unflatten([_apply_one(p, x, m) for p, x, m in zip(paths, leaves, mask_leaves)])


def _apply_one(path, x, mask):
  if mask is None:
    return x
  keep = as_mask_leaf(path, mask, x)
  return jnp.where(keep, x, jnp.zeros((), x.dtype))
