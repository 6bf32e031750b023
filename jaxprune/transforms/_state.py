"""States of the jaxprune transforms, and how to find their masks in any optimizer state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.core import (
    as_mask_leaf, at_path, describe, flatten_with_paths, is_array, leaves_like)
from jaxprune.masks import apply_masks


class PruneState(NamedTuple):
  """State of :func:`jaxprune.prune`.

  Attributes:
    count: int32 scalar, the number of updates done so far (the step of the next update).
    masks: pytree like params: a bool array (True = kept) per pruned leaf, ``None`` elsewhere.
    sparsity: float32 scalar, the target sparsity of the last mask update (0 before the
      first), for logging: ``float(state.sparsity)``.
    kept: int32 vector, one entry per pruned leaf (flattening order): the entries its mask
      keeps, counted at the last mask update (-1 for leaves of 2**31 entries or more, which
      are not checked; one -1 entry when no leaf is pruned).
    misplaced: bool vector like ``kept``: True where the last mask-update step found more
      non-zero weights than the mask kept before (pruned weights moved: ``prune`` is not the
      last transform of the chain; a ``MisplacedPruneWarning`` said so).

  >>> import jax.numpy as jnp
  >>> from jaxprune import transforms
  >>> state = transforms.prune(sparsity=0.5).init({"w": jnp.ones((2, 2))})
  >>> type(state).__name__, int(state.count), state.masks["w"].tolist(), float(state.sparsity)
  ('PruneState', 0, [[True, True], [True, True]], 0.0)
  """

  count: jax.Array
  masks: Any
  sparsity: jax.Array
  kept: jax.Array
  misplaced: jax.Array


class KeepSparseState(NamedTuple):
  """State of :func:`jaxprune.keep_sparse`: the fixed masks (placed like the params).

  >>> import jax.numpy as jnp
  >>> from jaxprune import transforms
  >>> state = transforms.keep_sparse({"w": jnp.array([True, False])}).init({"w": jnp.ones(2)})
  >>> type(state).__name__, state.masks["w"].tolist()
  ('KeepSparseState', [True, False])
  """

  masks: Any


def _has_masks(node) -> bool:
  """A NamedTuple with a ``masks`` field: the state of a jaxprune transform."""
  return isinstance(node, tuple) and "masks" in getattr(node, "_fields", ())


def _children(node):
  """The immediate children of a pytree node ([] for a leaf)."""
  children = jax.tree_util.tree_leaves(node, is_leaf=lambda x: x is not node)
  return [] if len(children) == 1 and children[0] is node else children


def _state_types(node, seen: list[str], depth: int = 0) -> None:
  if isinstance(node, tuple) and hasattr(node, "_fields"):
    seen.append(type(node).__name__)
  if depth < 32:
    for child in _children(node):
      _state_types(child, seen, depth + 1)


def masks_of(opt_state):
  """The current masks held by a jaxprune transform anywhere in a (nested) optimizer state.

  Walks any optax state: chains (tuples), ``optax.MultiSteps``, ``optax.inject_hyperparams``,
  ``optax.masked``/``partition`` states, dicts and other pytrees. The state of a jaxprune
  transform is any NamedTuple with a ``masks`` field (:class:`PruneState`, the state of
  ``keep_sparse``, RigL/SET states, ...). When several are found, the **last one in pytree
  flattening order** wins (for ``optax.chain(a, b)``: the one of ``b``).

  Args:
    opt_state: an optimizer state, as returned by ``tx.init`` or ``tx.update``.

  Returns:
    The masks pytree (bool arrays where pruned, ``None`` elsewhere).

  Raises:
    ValueError: no jaxprune state is in ``opt_state``, or a schedule-free state is there too
      (its evaluation weights would be dense: not supported).

  >>> import jax.numpy as jnp, optax, jaxprune
  >>> tx = optax.chain(optax.sgd(0.1), jaxprune.transforms.prune(sparsity=0.5))
  >>> masks_of(tx.init({"w": jnp.ones((2, 2))}))["w"].tolist()
  [[True, True], [True, True]]
  """
  found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_has_masks) if _has_masks(x)]
  schedule_free = optax.contrib.ScheduleFreeState
  if found and any(isinstance(x, schedule_free) for x in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, schedule_free))):
    raise ValueError(
        "masks_of: this optimizer state holds a schedule-free state (optax.contrib."
        "schedule_free*) next to a jaxprune state. Schedule-free optimizers keep a second copy "
        "of the weights (z) that jaxprune does not mask, so their evaluation weights "
        "(schedule_free_eval_params) are dense: not supported. Use a standard optimizer with "
        "jaxprune.prune last in the chain, e.g. optax.chain(optax.adamw(1e-3), prune(...)).")
  if not found:
    seen: list[str] = []
    _state_types(opt_state, seen)
    names = sorted(set(seen))
    raise ValueError(
        "masks_of: found no jaxprune state (a NamedTuple with a `masks` field, e.g. the state "
        f"of jaxprune.prune or jaxprune.keep_sparse) in an optimizer state of type "
        f"{type(opt_state).__name__}; NamedTuple states seen: {names}. Put jaxprune.prune(...) "
        "in the optax.chain of the optimizer whose state you pass, and pass the state returned "
        "by tx.init/tx.update.")
  return found[-1].masks


@jax.custom_jvp
def _straight_through(x, keep):
  return jnp.where(keep, x, jnp.zeros((), x.dtype))


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
  x, keep = primals
  dx, _ = tangents
  return _straight_through(x, keep), dx


def masked_params(params, opt_state, *, straight_through: bool = True):
  """The params with the masks of ``opt_state`` applied: the weights to use in the forward pass.

  Values equal ``jaxprune.apply_masks(params, jaxprune.masks_of(opt_state))`` (pruned entries
  exactly 0). With ``straight_through=True`` (the default) the gradient passes straight through
  to the dense weights: the gradient of a loss of the masked params with respect to ``params``
  is the gradient at the masked point, for every entry, pruned ones included (the
  straight-through estimator used with ``jaxprune.prune(..., straight_through=True)``). With
  ``straight_through=False`` pruned entries get a zero gradient.

  Args:
    params: the (dense) params.
    opt_state: an optimizer state holding a jaxprune state (see :func:`masks_of`).
    straight_through: identity gradient through the mask (True) or masked gradient (False).

  >>> import jax, jax.numpy as jnp, optax, jaxprune
  >>> params = {"w": jnp.array([[1., -3.], [0.5, 2.]])}
  >>> tx = optax.chain(optax.sgd(0.1),
  ...                  jaxprune.transforms.prune(sparsity=0.5, straight_through=True))
  >>> state = tx.init(params)
  >>> _, state = tx.update(params, state, params)
  >>> masked_params(params, state)["w"].tolist()
  [[0.0, -3.0], [0.0, 2.0]]
  >>> jax.grad(lambda p: masked_params(p, state)["w"].sum())(params)["w"].tolist()
  [[1.0, 1.0], [1.0, 1.0]]
  """
  masks = masks_of(opt_state)
  if not straight_through:
    return apply_masks(params, masks)
  paths, leaves, treedef = flatten_with_paths(params)
  mask_leaves = leaves_like(params, masks, name="masks")
  out = []
  for path, x, m in zip(paths, leaves, mask_leaves):
    if m is not None:
      x = _straight_through(x, as_mask_leaf(path, m, x))
    out.append(x)
  return treedef.unflatten(out)


def masked_updates(updates, params, masks, *, what: str = "masks"):
  """Updates such that ``optax.apply_updates(params, out)`` is exactly 0 where masks are False.

  Kept entries get their update unchanged; pruned entries get ``-params`` (so that
  ``params + update == 0`` exactly, for finite params). Where the updates and params dtypes
  differ, the masked leaf has their promoted dtype, so that ``-params`` is exact.
  """
  paths, u_leaves, treedef = flatten_with_paths(updates)
  p_leaves = leaves_like(updates, params, name="params", ref_name="updates")
  m_leaves = leaves_like(updates, masks, name=what, ref_name="updates")
  out = []
  for path, u, p, m in zip(paths, u_leaves, p_leaves, m_leaves):
    if m is None:
      out.append(u)
      continue
    m = as_mask_leaf(path, m, p, what=what)
    if not is_array(u) or tuple(u.shape) != tuple(p.shape):
      raise ValueError(f"updates at {at_path(path)} must be an array shaped like the params "
                       f"there {tuple(p.shape)}; got {describe(u)}.")
    out.append(masked_update_leaf(u, p, m))
  return treedef.unflatten(out)


def masked_update_leaf(u, p, keep):
  """``u`` where ``keep``, else ``-p``, in the promoted dtype so that ``p + out`` is exactly 0."""
  dtype = jnp.promote_types(u.dtype, p.dtype)
  return jnp.where(keep, u.astype(dtype), -p.astype(dtype))


def zeros_count():
  """The int32 zero step counter."""
  return jnp.zeros([], jnp.int32)


def increment(count):
  """``count + 1``, saturating at the int32 maximum."""
  top = np.iinfo(np.int32).max
  return count + (count < top).astype(count.dtype)
