"""Sparse training from step 0: RigL, SET (sparse evolution) and static sparse training.

One factory, :func:`sparse_training`, wraps an inner optimizer; the strategies differ only in
the ``grow`` score: ``tx = jaxprune.rigl(optax.adam(1e-3), sparsity=0.9, every=100,
end=7500, key=key)``. Call ``tx.update(grads, state, params)`` with the raw (dense) gradients
of the loss of the sparse params, as for any optax optimizer. The state is a
:class:`SparseTrainState` whose ``masks`` field holds the current masks (``jaxprune.masks_of``
finds it).

What happens at every update:

1. The incoming gradients are masked (inactive entries get 0) before the inner optimizer sees
   them, so the inner state of inactive weights keeps its initial value (0 for moments).
2. On mask-update steps (``begin <= t <= end``, ``(t - begin) % every == 0`` for the step
   count ``t``, as everywhere in :mod:`jaxprune.transforms`; ``begin`` defaults to ``every``:
   the initial mask is step 0's), inside ``lax.cond``, for every masked leaf with ``k`` active
   entries: ``d = round(drop_fraction(t) * k)`` (clipped to the inactive count) active weights
   of smallest magnitude are dropped and the ``d`` inactive ones of highest ``grow`` score are
   grown (RigL: dense-gradient magnitude; SET: uniform random). Weights dropped at this step
   are not candidates for growth. Per-leaf active counts never change.
3. The inner state of every entry that changed is reset to its value in a freshly initialised
   inner state, in every per-parameter copy the inner optimizer keeps (found by optax's
   param-shaped traversal; :func:`jaxprune.reset_optimizer_state`): adam, lion, sgd with
   momentum, adagrad, adafactor, chains, ``optax.masked``, ``optax.MultiSteps``, ...
4. The returned updates are the inner updates on entries active before and after the step and
   ``-params`` elsewhere, so ``optax.apply_updates(params, updates)`` leaves every inactive
   weight (dropped ones included) exactly 0 and every grown weight starts at exactly 0.

The initial params need not be sparse: the first update zeroes the inactive weights. To train
the sparse network from the very first forward pass, sparsify them yourself once:
``params = jaxprune.apply_masks(params, jaxprune.masks_of(state))``.

>>> import jax, jax.numpy as jnp, optax
>>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
>>> tx = rigl(optax.adam(1e-2), 0.75, every=2, end=10, allocate="uniform", key=0)
>>> state = tx.init(params)
>>> for _ in range(4):
...   grads = jax.grad(lambda p: jnp.sum(jnp.sin(p["w"]) * 3.0))(params)
...   updates, state = tx.update(grads, state, params)
...   params = optax.apply_updates(params, updates)
>>> int(state.masks["w"].sum()), int((params["w"] != 0).sum())
(16, 16)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxprune import masks as masks_lib, scores as scores_lib, summary as summary_lib
from jaxprune.core import (
    at_path, check_key, count_dtype, describe, flatten_with_paths, is_array, leaves_like,
    mask_leaves, replicated_like, sharded_like)
from jaxprune.transforms._reset import reset_optimizer_state
from jaxprune.transforms._sparse_setup import (
    as_transformation, check_allocate, drop_fraction_schedule, random_masks)
from jaxprune.transforms._state import masked_update_leaf
from jaxprune.transforms._steps import UpdateSteps

class SparseTrainState(NamedTuple):
  """State of :func:`sparse_training` (:func:`rigl`, :func:`sparse_evolution`, ...).

  Attributes:
    count: int32 scalar, the number of updates done so far.
    masks: pytree like params: a bool array per masked leaf (True = active), ``None`` elsewhere.
    sparsity: float32 scalar, the fraction of the masked leaves' entries that are inactive (it
      never changes: drop and grow keep every leaf's count), for logging.
    drop_fraction: float32 scalar, the fraction of active weights replaced at the last mask
      update (0 before the first one and in static sparse training), for logging.
    key: the PRNG key given to ``grow``, split at every mask update; ``None`` without a key or
      without mask updates (static sparse training).
    inner_state: the state of the wrapped optimizer.
  """

  count: jax.Array
  masks: Any
  sparsity: jax.Array
  drop_fraction: jax.Array
  key: Any
  inner_state: Any


def grow_by_gradient(params, *, grads, key):
  """RigL's growth score: the dense-gradient magnitude ``|grads|`` (float32 or wider).

  >>> grow_by_gradient({"w": jnp.ones(2)}, grads={"w": jnp.array([-3., 1.])}, key=None)["w"]
  Array([3., 1.], dtype=float32)
  """
  del key  # deterministic
  return scores_lib.gradient(params, grads)


def grow_at_random(params, *, grads, key):
  """SET's growth score: uniform random numbers from ``key``.

  >>> grow_at_random({"w": jnp.ones((2, 3))}, grads=None, key=jax.random.key(0))["w"].shape
  (2, 3)
  """
  del grads  # random
  return scores_lib.random(params, key)


def sparse_training(inner, sparsity=None, *, grow: Callable | None, every: int = 100,
                    begin: int | None = None, end: int | None = None,
                    drop_fraction: float = 0.3, drop_schedule=None, allocate="erk",
                    where=None, key=None, masks=None, name: str = "sparse_training"
                    ) -> optax.GradientTransformationExtraArgs:
  """Dynamic (or, with ``grow=None``, static) sparse training around ``inner``.

  Args:
    inner: any optax ``GradientTransformation`` (chains included) or ``optax.MultiSteps``.
    sparsity: one float spread over the leaves selected by ``where`` with ``allocate``, or a
      pytree of float|None per leaf (e.g. from :mod:`jaxprune.allocate`).
    grow: ``grow(params, *, grads, key) -> scores`` (higher = grown first; ``grads`` is the
      ``grads=`` extra or the incoming updates), e.g. :func:`grow_by_gradient`; ``None``: the
      masks never change.
    every, begin, end: mask-update steps; ``begin`` defaults to ``every``; ``end`` (inclusive)
      is required with the default cosine drop schedule (RigL uses 75% of training).
    drop_fraction: fraction of each leaf's active weights replaced at the first mask update.
    drop_schedule: ``None``/``"cosine"`` (``drop_fraction * (1 + cos(pi * t / end)) / 2``, as
      in RigL), ``"constant"``, or a callable ``step -> fraction`` (then ``drop_fraction`` is
      unused).
    allocate: how a float ``sparsity`` is spread: ``"erk"`` (default, as in RigL),
      ``"uniform"``, or a callable ``(params, sparsity, where=...) -> pytree``.
    where: which leaves are sparse when ``sparsity`` is a float (default: ``ndim >= 2``).
    key: PRNG key (or int seed) for the random initial mask and for ``grow``; not needed with
      ``masks`` and a deterministic ``grow``.
    masks: initial masks (bool, or non-zero = active; None where dense) instead of a random
      mask at ``sparsity``.
    name: the name used in error messages.

  Returns:
    An optax ``GradientTransformationExtraArgs`` with :class:`SparseTrainState`. Extra
    arguments of its ``update`` are passed to ``inner``.

  >>> tx = sparse_training(optax.sgd(0.5), masks={"w": jnp.array([True, False])}, grow=None)
  >>> p = {"w": jnp.ones(2)}
  >>> optax.apply_updates(p, tx.update(p, tx.init(p), p)[0])["w"].tolist()  # w1 stays 0
  [0.5, 0.0]
  """
  inner = as_transformation(inner, name)
  if (sparsity is None) == (masks is None):
    raise ValueError(f"{name}: give exactly one of sparsity= (a float or a pytree of float|None "
                     f"per leaf) and masks= (initial masks); got "
                     f"{'both' if masks is not None else 'neither'}.")
  alloc = check_allocate(allocate, name)
  if masks is None and key is None:
    raise TypeError(f"{name} draws a random initial mask and needs key= (a jax.random.key or "
                    f"an int seed), e.g. {name}(inner, 0.9, key=jax.random.key(0)); or pass "
                    "masks=.")
  key = None if key is None else check_key(key, name)
  if grow is not None:
    steps = UpdateSteps.of(begin=every if begin is None else begin, every=every, end=end,
                           context=name, check_order=begin is not None)
    fraction = drop_fraction_schedule(drop_fraction, drop_schedule, steps.end, name)

  def init_fn(params):
    if masks is not None:
      initial = mask_leaves(params, masks, what="masks")
      if all(m is None for m in initial):
        raise ValueError(f"{name}: masks are None at every leaf: nothing is sparse. Give a bool "
                         "array for each sparse leaf, e.g. from jaxprune.masks.topk.")
      initial = jax.tree.structure(params).unflatten(initial)
    else:
      initial = random_masks(params, sparsity, alloc, where, key)
    _, p_leaves, treedef = flatten_with_paths(params)
    initial = treedef.unflatten([None if m is None else sharded_like(m, p) for m, p in zip(
        leaves_like(params, initial, name="masks"), p_leaves)])
    state_key = None if grow is None else key
    inactive = summary_lib.sparsity(initial)["total"]  # every mask leaf is bool
    return replicated_like(SparseTrainState(
        jnp.zeros([], jnp.int32), initial, inactive, jnp.zeros([], jnp.float32), state_key,
        inner.init(params)), params)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(f"{name}.update needs params (it drops weights by magnitude and zeroes "
                       "inactive ones): call tx.update(grads, state, params).")
    _, p_leaves, treedef = flatten_with_paths(params)
    old = leaves_like(params, state.masks, name="state.masks")
    u_leaves = _aligned(params, old, updates, "updates", name)
    inner_updates, inner_state = inner.update(
        treedef.unflatten([u if m is None else jnp.where(m, u, jnp.zeros((), u.dtype))
                           for u, m in zip(u_leaves, old)]),
        state.inner_state, params, **extra_args)
    new_masks, new_key, dropped = state.masks, state.key, state.drop_fraction
    if grow is not None:
      grads = treedef.unflatten(_aligned(params, old, extra_args.get("grads", updates), "grads",
                                         name))

      def change(operands):  # on mask-update steps only
        masks, key, _ = operands
        key, sub = (None, None) if key is None else jax.random.split(key)
        scores = grow(params, grads=grads, key=sub)  # pyright: ignore[reportOptionalCall]
        drop = jnp.clip(jnp.asarray(fraction(state.count), jnp.float32), 0.0, 1.0)
        return _drop_and_grow(params, masks, scores, drop), key, drop

      new_masks, new_key, dropped = lax.cond(steps(state.count), change, lambda operands: operands,
                                             (state.masks, state.key, state.drop_fraction))
      # Only the masks go through the conditional: the reset is elementwise and fuses with
      # the inner update (a conditional over the whole inner state would copy it).
      changed = [None if m is None else m != n
                 for m, n in zip(old, leaves_like(params, new_masks, name="masks"))]
      inner_state = reset_optimizer_state(inner, inner_state, params,
                                          treedef.unflatten(changed))
    new = leaves_like(params, new_masks, name="masks")
    out = [u if m is None else masked_update_leaf(u, p, m & n) for u, p, m, n in zip(
        leaves_like(params, inner_updates, name="inner updates"), p_leaves, old, new)]
    count = jnp.asarray(optax.safe_int32_increment(state.count))
    return treedef.unflatten(out), SparseTrainState(count, new_masks, state.sparsity, dropped,
                                                    new_key, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def rigl(inner, sparsity=None, **options) -> optax.GradientTransformationExtraArgs:
  """RigL (Evci et al., 2020): drop by magnitude, grow by dense-gradient magnitude.

  :func:`sparse_training` with ``grow=grow_by_gradient``: growth follows the magnitude of the
  incoming updates (the raw dense gradients when ``rigl`` gets them first, as usual), or of
  ``grads=`` when that extra argument is given. Options: those of :func:`sparse_training`.

  >>> p = {"w": jnp.ones((8, 8))}
  >>> tx = rigl(optax.sgd(0.1), 0.5, every=1, end=10, allocate="uniform", key=1)
  >>> int(tx.update(p, tx.init(p), p)[1].masks["w"].sum())  # 32 of 64 active after a step
  32
  """
  return sparse_training(inner, sparsity, grow=grow_by_gradient, name="rigl", **options)


def sparse_evolution(inner, sparsity=None, **options) -> optax.GradientTransformationExtraArgs:
  """SET (Mocanu et al., 2018): drop by magnitude, grow uniformly at random.

  :func:`sparse_training` with ``grow=grow_at_random``: grown weights are drawn uniformly among
  the inactive ones (not dropped at this step) with ``key`` (required), split at every mask
  update and kept in the state.

  >>> import jax, jax.numpy as jnp, optax
  >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8))}
  >>> tx = sparse_evolution(optax.sgd(0.1), 0.5, every=1, drop_schedule="constant",
  ...                       allocate="uniform", key=jax.random.key(1))
  >>> state = tx.init(params)
  >>> before = state.masks["w"]
  >>> for _ in range(2):
  ...   updates, state = tx.update(params, state, params)
  ...   params = optax.apply_updates(params, updates)
  >>> int(state.masks["w"].sum()), int((state.masks["w"] != before).sum()) > 0
  (32, True)
  """
  if options.get("key") is None:
    raise TypeError("sparse_evolution needs key= (a jax.random.key or an int seed): growth is "
                    "random. E.g. sparse_evolution(inner, 0.9, key=jax.random.key(0)).")
  return sparse_training(inner, sparsity, grow=grow_at_random, name="sparse_evolution",
                         **options)


def static_sparse(inner, sparsity=None, **options) -> optax.GradientTransformationExtraArgs:
  """Static sparse training: one fixed mask from step 0 (random at ``sparsity``, or ``masks``).

  :func:`sparse_training` with ``grow=None``: the baseline of dynamic sparse training, and
  retraining of lottery tickets. Options: ``allocate``, ``where``, ``key``, ``masks``.

  >>> import jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones((2, 2))}
  >>> tx = static_sparse(optax.sgd(1.0), masks={"w": jnp.array([[True, False], [False, True]])})
  >>> state = tx.init(params)
  >>> updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [[0.0, 0.0], [0.0, 0.0]]
  """
  return sparse_training(inner, sparsity, grow=None, name="static_sparse", **options)


def _drop_and_grow(params, masks, scores, fraction):
  """New masks: per leaf drop ``d`` smallest-magnitude active entries, grow ``d`` inactive."""
  _, p_leaves, treedef = flatten_with_paths(params)
  s_leaves = leaves_like(params, scores, name="grow scores")
  new = []
  for p, m, s in zip(p_leaves, leaves_like(params, masks, name="masks"), s_leaves):
    if m is None:
      new.append(None)
      continue
    n = int(np.prod(m.shape, dtype=np.int64))
    active = jnp.sum(m, dtype=count_dtype(n))
    drop = jnp.round(fraction * active.astype(jnp.float32)).astype(active.dtype)
    drop = jnp.clip(drop, 0, jnp.minimum(active, n - active))
    kept = masks_lib.top_k([jnp.abs(p)], [m], active - drop)[0]
    new.append(kept | masks_lib.top_k([s], [~m], drop)[0])
  return treedef.unflatten(new)


def _aligned(params, masks, tree, what, name) -> list:
  """The leaves of ``tree`` (updates or grads), shaped like the params at masked leaves."""
  paths, p_leaves, _ = flatten_with_paths(params)
  leaves = leaves_like(params, tree, name=what)
  for path, p, m, u in zip(paths, p_leaves, masks, leaves):
    if m is not None and (not is_array(u) or tuple(u.shape) != tuple(p.shape)):
      raise ValueError(f"{name}: {what} at {at_path(path)} must be an array shaped like the "
                       f"params there {tuple(p.shape)}; got {describe(u)}.")
    if m is not None and tuple(m.shape) != tuple(p.shape):
      raise ValueError(f"{name}: the state's mask at {at_path(path)} has shape "
                       f"{tuple(m.shape)} but params there have shape {tuple(p.shape)}. "
                       "Initialise the optimizer state with these params.")
  return leaves
