"""``keep_sparse``: fixed masks during training (fine-tuning a pruned model, lottery tickets)."""

from __future__ import annotations

import optax

from jaxprune.core import (
    as_mask_leaf, at_path, describe, flatten_with_paths, is_array, mask_leaves, sharded_like)
from jaxprune.transforms._state import KeepSparseState, masked_updates

__all__ = ["KeepSparseState", "keep_sparse"]


def keep_sparse(masks) -> optax.GradientTransformation:
  """Keeps the pruned entries of ``masks`` at exactly 0; goes **last** in an ``optax.chain``.

  The returned updates are such that ``optax.apply_updates(params, updates)`` is exactly 0
  wherever a mask is False (the first update also zeroes weights that were not zero yet), and
  unchanged elsewhere, whatever came before in the chain (momentum, Adam, weight decay); this
  holds for finite params (an additive update cannot bring ``inf``/``NaN`` to 0). The
  masks are checked against the params (tree structure, shapes) at ``init`` and ``update``,
  and stored in the state (:class:`KeepSparseState`, placed on the params' shardings), so
  ``jaxprune.masks_of(opt_state)`` returns them.

  Args:
    masks: pytree like the params: a mask where pruned, ``None`` elsewhere, e.g.
      ``jaxprune.masks_of(state)`` after ``jaxprune.prune`` or ``jaxprune.masks.topk(...)``.
      A mask is a bool array (True = kept) or any numeric array (non-zero = kept; the rule
      of :func:`jaxprune.core.as_mask_leaf`, the same everywhere).

  Returns:
    An ``optax.GradientTransformation``; its ``update`` needs ``params``.

  >>> import jax.numpy as jnp, optax, jaxprune
  >>> params = {"w": jnp.array([[1., 2.], [3., 4.]])}
  >>> masks = {"w": jnp.array([[False, True], [True, False]])}
  >>> tx = optax.chain(optax.sgd(0.5, momentum=0.9), jaxprune.transforms.keep_sparse(masks))
  >>> state = tx.init(params)
  >>> updates, state = tx.update(params, state, params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [[0.0, 1.0], [1.5, 0.0]]
  """
  masks = _bool_masks(masks)

  def init_fn(params):
    _, leaves, treedef = flatten_with_paths(params)
    placed = [None if m is None else sharded_like(m, x)
              for m, x in zip(mask_leaves(params, masks), leaves)]
    return KeepSparseState(masks=treedef.unflatten(placed))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "jaxprune.keep_sparse needs the current params to keep pruned weights at 0: call "
          "tx.update(updates, opt_state, params) (params as the third argument).")
    if not isinstance(state, KeepSparseState):
      raise TypeError(f"jaxprune.keep_sparse got a state of type {type(state).__name__}; "
                      "expected the KeepSparseState returned by its init.")
    return masked_updates(updates, params, state.masks), state

  return optax.GradientTransformation(init_fn, update_fn)


def _bool_masks(masks):
  """Static checks that need no params: every leaf is a mask (None leaves vanish)."""
  paths, leaves, treedef = flatten_with_paths(masks)
  if not leaves:
    raise ValueError("keep_sparse: masks hold no mask (every leaf is None): nothing would be "
                     "kept sparse. Pass masks from jaxprune.masks.topk(...) or masks_of(...).")
  for path, m in zip(paths, leaves):
    if not is_array(m):
      raise TypeError(f"keep_sparse: masks at {at_path(path)} must be a bool array (True = "
                      f"kept) or None; got {describe(m)}.")
  return treedef.unflatten([as_mask_leaf(p, m, m) for p, m in zip(paths, leaves)])
