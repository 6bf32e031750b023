"""One rule for mask leaves everywhere: a bool array shaped like its param (True = kept).

Non-bool arrays are accepted and converted with ``mask != 0`` (any non-zero entry is kept), the
documented conversion used by every function that takes masks (``apply_masks``, ``previous=``,
``keep_sparse``, ``rigl(masks=)``, ``compensate``, ...).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxprune.core._errors import at_path, describe
from jaxprune.core._paths import flatten_with_paths
from jaxprune.core._trees import is_array, leaves_like


def check_mask_leaf(path: str, mask, like, *, what: str = "masks",
                    like_name: str = "params") -> None:
  """Raises unless ``mask`` is an array (bool, or numeric: non-zero = kept) shaped like ``like``.

  Args:
    path: the leaf's path, for messages.
    mask: the mask leaf to check.
    like: the param (or score) leaf the mask belongs to.
    what: the argument's name, for messages.
    like_name: what ``like`` is (``"params"``, ``"scores"``), for messages.

  >>> import jax.numpy as jnp
  >>> check_mask_leaf("w", jnp.ones(3, bool), jnp.ones(2))
  Traceback (most recent call last):
  ValueError: masks at 'w' has shape (3,) but params there have shape (2,). Build the masks from these params (e.g. jaxprune.masks.topk of their scores).
  """
  if not is_array(like):
    raise TypeError(f"{what} at {at_path(path)} is a mask but {like_name} there are not an "
                    f"array: got {describe(like)}. Use None in {what} for leaves that are not "
                    "pruned.")
  if not is_array(mask):
    raise TypeError(f"{what} at {at_path(path)} must be a bool array (True = kept) or None; "
                    f"got {describe(mask)}.")
  if tuple(mask.shape) != tuple(like.shape):
    raise ValueError(
        f"{what} at {at_path(path)} has shape {tuple(mask.shape)} but {like_name} there have "
        f"shape {tuple(like.shape)}. Build the masks from these params (e.g. "
        "jaxprune.masks.topk of their scores).")
  if jnp.issubdtype(mask.dtype, jnp.complexfloating):
    raise TypeError(f"{what} at {at_path(path)} must be a bool array (True = kept); got "
                    f"{describe(mask)}. Convert it with mask != 0.")


def as_mask_leaf(path: str, mask, like, *, what: str = "masks", like_name: str = "params"):
  """Returns ``mask`` as a bool array after :func:`check_mask_leaf` (non-zero = kept).

  >>> import jax.numpy as jnp
  >>> as_mask_leaf("w", jnp.array([0.0, 2.0]), jnp.ones(2)).tolist()
  [False, True]
  """
  check_mask_leaf(path, mask, like, what=what, like_name=like_name)
  return jnp.asarray(mask) if mask.dtype == jnp.bool_ else jnp.asarray(mask) != 0


def mask_leaves(params, masks, *, what: str = "masks") -> list:
  """``masks`` aligned to the leaves of ``params``: a bool array or ``None`` per leaf.

  Each mask goes through :func:`as_mask_leaf` (the one rule: bool, or non-zero = kept); a
  tree that does not align with ``params`` raises a ``ValueError`` naming the paths.

  >>> import jax.numpy as jnp
  >>> mask_leaves({"w": jnp.ones(2), "b": jnp.ones(1)}, {"w": jnp.array([1, 0]), "b": None})
  [None, Array([ True, False], dtype=bool)]
  """
  paths, leaves, _ = flatten_with_paths(params)
  aligned = leaves_like(params, masks, name=what)
  return [None if m is None else as_mask_leaf(p, m, x, what=what)
          for p, x, m in zip(paths, leaves, aligned)]
