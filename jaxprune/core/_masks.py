"""One rule for mask leaves everywhere: a bool array shaped like its param (True = kept).

Non-bool arrays are accepted and converted with ``mask != 0`` (any non-zero entry is kept), the
documented conversion used by every function that takes masks (``apply_masks``, ``previous=``,
``keep_sparse``, ``rigl(masks=)``, ``compensate``, ...).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxprune.core._errors import at_path, describe
from jaxprune.core._trees import is_array


def as_mask_leaf(path: str, mask, like, *, what: str = "masks"):
  """Returns ``mask`` as a bool array after checking it fits the array leaf ``like``.

  Args:
    path: the leaf's path, for messages.
    mask: a bool array (True = kept) or any numeric array (non-zero = kept).
    like: the param (or score) leaf the mask belongs to.
    what: the argument's name, for messages.

  >>> import jax.numpy as jnp
  >>> as_mask_leaf("w", jnp.array([0.0, 2.0]), jnp.ones(2)).tolist()
  [False, True]
  """
  if not is_array(like):
    raise TypeError(f"{what} at {at_path(path)} is a mask but the leaf there is not an array: "
                    f"got {describe(like)}. Use None in {what} for leaves that are not pruned.")
  if not is_array(mask):
    raise TypeError(f"{what} at {at_path(path)} must be a bool array (True = kept) or None; "
                    f"got {describe(mask)}.")
  if tuple(mask.shape) != tuple(like.shape):
    raise ValueError(
        f"{what} at {at_path(path)} has shape {tuple(mask.shape)} but the leaf there has shape "
        f"{tuple(like.shape)}. Build the masks from these params (e.g. jaxprune.masks.topk of "
        "their scores).")
  if jnp.issubdtype(mask.dtype, jnp.complexfloating):
    raise TypeError(f"{what} at {at_path(path)} must be a bool array (True = kept); got "
                    f"{describe(mask)}. Convert it with mask != 0.")
  return jnp.asarray(mask) if mask.dtype == jnp.bool_ else jnp.asarray(mask) != 0
