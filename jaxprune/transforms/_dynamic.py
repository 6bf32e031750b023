"""Sparse training from step 0: RigL, SET (sparse evolution) and static sparse training.

Each is an optax ``GradientTransformationExtraArgs`` that **wraps** an inner optimizer:
``tx = jaxprune.rigl(optax.adam(1e-3), sparsity=0.9, every=100, end=7500, key=key)``.
Call ``tx.update(grads, state, params)`` with the raw (dense) gradients of the loss of the
sparse params, as for any optax optimizer. The state is a :class:`SparseTrainState` whose
``masks`` field holds the current masks (``jaxprune.masks_of`` finds it).

What happens at every update:

1. The incoming gradients are masked (inactive entries get 0) before the inner optimizer sees
   them, so the inner state of inactive weights keeps its initial value (0 for moments).
2. On mask-update steps (0-based update index ``t`` a positive multiple of ``every`` with
   ``begin <= t < end``; inside ``lax.cond``, so other steps do not compute it), for every masked
   leaf with ``k`` active entries: ``d = round(drop_fraction(t) * k)`` (clipped to the inactive
   count) active weights of smallest magnitude are dropped and ``d`` inactive ones are grown,
   RigL: largest dense-gradient magnitude, SET: uniformly at random. Weights dropped at this
   step are not candidates for growth. Per-leaf active counts never change.
3. The inner state of every entry that changed (grown or dropped) is reset, in every
   params-like sub-tree of the inner state, to the value a freshly initialised inner optimizer
   holds there (``inner.init(params)``: 0 for Adam's ``mu``/``nu``, momentum traces, Lion's
   ``mu``, ``MultiSteps``' accumulated gradients; the initial accumulator for adagrad); see
   :func:`reset_optimizer_state`. This needs no list of known optimizers: it works for adam,
   adamw, lion, sgd with momentum, chains, ``optax.MultiSteps``, ``inject_hyperparams``, ...
4. The returned updates are the inner updates on entries active before and after the step and
   ``-params`` elsewhere, so ``optax.apply_updates(params, updates)`` leaves every inactive
   weight (dropped ones included) exactly 0 and every grown weight starts at exactly 0.

The initial params need not be sparse: the first update zeroes the inactive weights. To train
the sparse network from the very first forward pass, sparsify them yourself once:
``params = jaxprune.apply_masks(params, jaxprune.masks_of(state))``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxprune import allocate as _allocate
from jaxprune import filters
from jaxprune import scores as _scores
from jaxprune.core import (
    at_path, check_sparsity, describe, flatten_with_paths, is_array, is_static_number,
    leaves_like)
from jaxprune.masks import topk
from jaxprune.masks._plan import count_dtype
from jaxprune.masks._search import top_k
from jaxprune.transforms._reset import reset_optimizer_state
from jaxprune.transforms._state import masked_update_leaf, mesh_of, placed_like

_ALLOCATIONS = {"erk": _allocate.erk, "uniform": _allocate.uniform}
_DROP_SCHEDULES = ("cosine", "constant")


class SparseTrainState(NamedTuple):
  """State of :func:`rigl`, :func:`sparse_evolution` and :func:`static_sparse`.

  Attributes:
    count: int32 scalar, the number of updates done so far.
    masks: pytree like params: a bool array per masked leaf (True = active), ``None`` elsewhere.
    key: the PRNG key for random growth (SET), split at every mask update; ``None`` when the
      transform needs no randomness after ``init``.
    inner_state: the state of the wrapped optimizer.
  """

  count: jax.Array
  masks: Any
  key: Any
  inner_state: Any


def rigl(inner, sparsity=None, *, every: int = 100, end: int | None = None,
         drop_fraction: float = 0.3, drop_schedule=None, begin: int = 0,
         allocate="erk", where=None, key=None, masks=None
         ) -> optax.GradientTransformationExtraArgs:
  """RigL (Evci et al., 2020): drop by magnitude, grow by dense-gradient magnitude.

  Args:
    inner: the optimizer to wrap: any optax ``GradientTransformation`` (chains included) or an
      ``optax.MultiSteps`` object.
    sparsity: target sparsity, one float spread over the leaves selected by ``where`` with
      ``allocate``, or a pytree of float|None per leaf (e.g. from :mod:`jaxprune.allocate`).
    every: steps between mask updates.
    end: the first step at which masks no longer change (RigL uses 75% of training); required
      with the default cosine drop schedule.
    drop_fraction: fraction of each leaf's active weights replaced at the first mask update.
    drop_schedule: how the drop fraction evolves with the step ``t``: ``None``/``"cosine"``
      (``drop_fraction * (1 + cos(pi * t / end)) / 2``, as in RigL), ``"constant"``, or a
      callable ``step -> fraction`` (an optax schedule; ``drop_fraction`` is then unused).
    begin: no mask update before this step.
    allocate: how a float ``sparsity`` is spread over leaves: ``"erk"`` (default, as in RigL),
      ``"uniform"``, or a callable ``(params, sparsity, where=...) -> pytree``.
    where: which leaves are sparse when ``sparsity`` is a float (default: ``ndim >= 2``).
    key: PRNG key (or int seed) for the random initial mask; not needed with ``masks``.
    masks: initial masks (pytree like params, bool arrays or None) instead of a random mask
      at ``sparsity``.

  Returns:
    An optax ``GradientTransformationExtraArgs`` with :class:`SparseTrainState`. Its ``update``
    grows by the magnitude of the incoming updates (the raw dense gradients when ``rigl`` gets
    them first, as usual), or of ``grads=`` when that extra argument is given. Other extra
    arguments are passed to ``inner``.

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
  return _sparse_training(inner, sparsity, grow="gradient", every=every, end=end,
                          drop_fraction=drop_fraction, drop_schedule=drop_schedule,
                          begin=begin, allocate=allocate, where=where, key=key, masks=masks,
                          name="rigl")


def sparse_evolution(inner, sparsity=None, *, every: int = 100, end: int | None = None,
                     drop_fraction: float = 0.3, drop_schedule=None, begin: int = 0,
                     allocate="erk", where=None, key=None, masks=None
                     ) -> optax.GradientTransformationExtraArgs:
  """SET (Mocanu et al., 2018): drop by magnitude, grow uniformly at random.

  Same arguments and behaviour as :func:`rigl`, except that grown weights are drawn uniformly
  among the inactive ones (not dropped at this step) with ``key`` (required), which is split at
  every mask update and kept in the state.

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
  if key is None:
    raise TypeError("sparse_evolution needs key= (a jax.random.key or an int seed): growth is "
                    "random. E.g. sparse_evolution(inner, 0.9, key=jax.random.key(0)).")
  return _sparse_training(inner, sparsity, grow="random", every=every, end=end,
                          drop_fraction=drop_fraction, drop_schedule=drop_schedule,
                          begin=begin, allocate=allocate, where=where, key=key, masks=masks,
                          name="sparse_evolution")


def static_sparse(inner, sparsity=None, *, allocate="erk", where=None, key=None, masks=None
                  ) -> optax.GradientTransformationExtraArgs:
  """Static sparse training: one fixed mask from step 0 (random at ``sparsity``, or ``masks``).

  The baseline of dynamic sparse training, and retraining of lottery tickets: the same
  machinery as :func:`rigl` with no mask updates. Gradients of inactive weights are masked
  before the inner optimizer, and updates keep inactive weights exactly 0.

  Args:
    inner: the optimizer to wrap.
    sparsity: float (spread with ``allocate`` over ``where``) or pytree of float|None.
    allocate, where: as in :func:`rigl`.
    key: PRNG key or int seed for the random mask (not needed with ``masks``).
    masks: fixed masks (bool arrays or None per leaf) instead of a random mask.

  >>> import jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones((2, 2))}
  >>> tx = static_sparse(optax.sgd(1.0), masks={"w": jnp.array([[True, False], [False, True]])})
  >>> state = tx.init(params)
  >>> updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [[0.0, 0.0], [0.0, 0.0]]
  """
  return _sparse_training(inner, sparsity, grow=None, every=None, end=None, drop_fraction=0.0,
                          drop_schedule="constant", begin=0, allocate=allocate, where=where,
                          key=key, masks=masks, name="static_sparse")


def cosine_drop_fraction(drop_fraction: float, end: int) -> Callable:
  """RigL's drop-fraction schedule: ``drop_fraction * (1 + cos(pi * min(t, end) / end)) / 2``.

  >>> schedule = cosine_drop_fraction(0.3, 100)
  >>> float(schedule(0)), round(float(schedule(50)), 4), float(schedule(100))
  (0.30000001192092896, 0.15, 0.0)
  """
  def schedule(step):
    t = jnp.minimum(jnp.asarray(step, jnp.float32), float(end)) / float(end)
    return jnp.float32(drop_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))

  return schedule


def _sparse_training(inner, sparsity, *, grow, every, end, drop_fraction, drop_schedule, begin,
                     allocate, where, key, masks, name):
  """The shared implementation; ``grow`` is "gradient", "random" or None (static)."""
  inner = _as_transformation(inner, name)
  if (sparsity is None) == (masks is None):
    raise ValueError(f"{name}: give exactly one of sparsity= (a float or a pytree of float|None "
                     f"per leaf) and masks= (initial masks); got "
                     f"{'both' if masks is not None else 'neither'}.")
  alloc = _check_allocate(allocate, name)
  if masks is None and key is None:
    raise TypeError(f"{name} draws a random initial mask and needs key= (a jax.random.key or "
                    f"an int seed), e.g. {name}(inner, 0.9, key=jax.random.key(0)); or pass "
                    "masks=.")
  key = None if key is None else _check_key(key, name)
  schedule = None
  if grow is not None:
    every = _check_int(every, "every", name, 1)
    begin = _check_int(begin, "begin", name, 0)
    end = None if end is None else _check_int(end, "end", name, 1)
    schedule = _drop_schedule(drop_fraction, drop_schedule, end, name)
  stored_key = key if grow == "random" else None

  def init_fn(params):
    if masks is not None:
      initial = _check_masks(params, masks, name)
    else:
      initial = _random_masks(params, sparsity, alloc, where, key)
    initial = _placed_like_params(initial, params)
    count = placed_like(jnp.zeros([], jnp.int32), params)
    state_key = None if stored_key is None else placed_like(stored_key, params)
    inner_state = _replicate_single_device(inner.init(params), params)
    return SparseTrainState(count, initial, state_key, inner_state)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(f"{name}.update needs params (it drops weights by magnitude and zeroes "
                       "inactive ones): call tx.update(grads, state, params).")
    paths, p_leaves, treedef = flatten_with_paths(params)
    m_leaves = leaves_like(params, state.masks, name="state.masks")
    u_leaves = leaves_like(params, updates, name="updates")
    for path, p, m, u in zip(paths, p_leaves, m_leaves, u_leaves):
      if m is not None:
        _check_leaf(path, p, m, u, "updates", name)
    masked_grads = [u if m is None else jnp.where(m, u, jnp.zeros((), u.dtype))
                    for u, m in zip(u_leaves, m_leaves)]
    inner_updates, inner_state = inner.update(
        treedef.unflatten(masked_grads), state.inner_state, params, **extra_args)
    new_masks, state_key = state.masks, state.key
    if grow is not None:
      grow_leaves = None
      if grow == "gradient":
        grads = extra_args.get("grads", updates)
        grow_leaves = leaves_like(params, grads, name="grads")
        for path, p, m, g in zip(paths, p_leaves, m_leaves, grow_leaves):
          if m is not None:
            _check_leaf(path, p, m, g, "grads", name)
      count = state.count
      fraction = jnp.clip(jnp.asarray(schedule(count), jnp.float32), 0.0, 1.0)
      is_update = (count > 0) & (count % every == 0) & (count >= begin)
      if end is not None:
        is_update = is_update & (count < end)

      def change(operands):
        old_masks, state_key = operands
        old = leaves_like(params, old_masks, name="state.masks")
        random_key = None
        if grow == "random":
          state_key, random_key = jax.random.split(state_key)
        new = _drop_and_grow(p_leaves, old, grow_leaves, fraction, random_key)
        return treedef.unflatten(new), state_key

      # Only the masks go through the conditional: resetting the inner state below is
      # elementwise and fuses with the inner update (a conditional over the whole inner
      # state would copy it at every step).
      new_masks, state_key = lax.cond(
          is_update, change, lambda operands: operands, (state.masks, state.key))
      changed = [None if m is None else m != n for m, n in zip(
          m_leaves, leaves_like(params, new_masks, name="masks"))]
      inner_state = reset_optimizer_state(inner_state, params, treedef.unflatten(changed),
                                          fresh=inner.init(params))
    new_leaves = leaves_like(params, new_masks, name="masks")
    u_out = leaves_like(params, inner_updates, name="inner updates")
    out = [u if m is None else masked_update_leaf(u, p, m & n)
           for u, p, m, n in zip(u_out, p_leaves, m_leaves, new_leaves)]
    count = optax.safe_int32_increment(state.count)
    return treedef.unflatten(out), SparseTrainState(count, new_masks, state_key, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _drop_and_grow(p_leaves, old, grow_leaves, fraction, random_key):
  """New masks: per leaf drop ``d`` smallest-magnitude active entries, grow ``d`` inactive."""
  new = []
  for i, (p, m) in enumerate(zip(p_leaves, old)):
    if m is None:
      new.append(None)
      continue
    n = int(np.prod(m.shape, dtype=np.int64))
    dtype = count_dtype(n)
    active = jnp.sum(m, dtype=dtype)
    drop = jnp.round(fraction * active.astype(jnp.float32)).astype(dtype)
    drop = jnp.clip(drop, 0, jnp.minimum(active, n - active))
    magnitude = jnp.abs(p)
    kept = top_k([magnitude], [m], active - drop, count_dtype=dtype)[0]
    if random_key is not None:
      grow_score = jax.random.uniform(jax.random.fold_in(random_key, i), m.shape, jnp.float32)
    else:
      g = grow_leaves[i]
      grow_score = jnp.abs(g.astype(jnp.promote_types(g.dtype, jnp.float32)))
    grown = top_k([grow_score], [~m], drop, count_dtype=dtype)[0]
    new.append(kept | grown)
  return new


def _random_masks(params, sparsity, alloc, where, key):
  """Exact-count random masks at ``sparsity`` (allocated over leaves when it is a float).

  Computed by one jitted call (compiled once per shapes and sparsities): eager top-k would
  dispatch hundreds of tiny operations.
  """
  paths, leaves, treedef = flatten_with_paths(params)
  if is_static_number(sparsity) and not isinstance(sparsity, bool):
    values = leaves_like(params, alloc(params, float(sparsity), where=where),
                         name="allocated sparsity")
  else:
    values = leaves_like(params, sparsity, name="sparsity")
    if where is not None:
      values = [v if c else None for v, c in zip(values, filters.select(params, where))]
  if all(v is None for v in values):
    raise ValueError("sparsity selects no leaf: every entry is None. Give a float for the "
                     "leaves to make sparse, e.g. jaxprune.allocate.uniform(params, 0.9).")
  static = []
  for path, x, v in zip(paths, leaves, values):
    if v is not None and not is_array(x):
      raise TypeError(f"sparsity at {at_path(path)} is {v!r} but params there are not an "
                      f"array: got {describe(x)}. Use None for leaves that are not sparse.")
    v = None if v is None else check_sparsity(v, path)
    if v is not None and not isinstance(v, float):
      raise TypeError(f"sparsity at {at_path(path)} must be a static float for the initial "
                      f"mask; got {describe(v)}.")
    static.append(v)
  shapes = tuple(tuple(np.shape(x)) if is_array(x) else None for x in leaves)
  return _random_masks_jit(key, treedef, shapes, tuple(static))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_masks_jit(key, treedef, shapes, sparsities):
  leaves = [jax.ShapeDtypeStruct(() if s is None else s, np.float32) for s in shapes]
  params = treedef.unflatten(leaves)
  return topk(_scores.random(params, key), treedef.unflatten(list(sparsities)))


def _check_masks(params, masks, name):
  paths, p_leaves, treedef = flatten_with_paths(params)
  m_leaves = leaves_like(params, masks, name="masks")
  out = []
  for path, p, m in zip(paths, p_leaves, m_leaves):
    if m is None:
      out.append(None)
      continue
    if not is_array(m):
      raise TypeError(f"{name}: masks at {at_path(path)} must be a bool array or None; got "
                      f"{describe(m)}.")
    if not is_array(p) or tuple(m.shape) != tuple(p.shape):
      raise ValueError(f"{name}: masks at {at_path(path)} have shape {tuple(m.shape)} but "
                       f"params there are {describe(p)}. Build the masks from these params.")
    out.append(jnp.asarray(m if m.dtype == jnp.bool_ else m != 0))
  if all(m is None for m in out):
    raise ValueError(f"{name}: masks are None at every leaf: nothing is sparse. Give a bool "
                     "array for each sparse leaf, e.g. from jaxprune.masks.topk.")
  return treedef.unflatten(out)


def _check_leaf(path, p, m, u, what, name):
  if not is_array(u) or tuple(u.shape) != tuple(p.shape):
    raise ValueError(f"{name}: {what} at {at_path(path)} must be an array shaped like the "
                     f"params there {tuple(p.shape)}; got {describe(u)}.")
  if tuple(m.shape) != tuple(p.shape):
    raise ValueError(f"{name}: the state's mask at {at_path(path)} has shape {tuple(m.shape)} "
                     f"but params there have shape {tuple(p.shape)}. Initialise the optimizer "
                     "state with these params.")


def _as_transformation(inner, name):
  if hasattr(inner, "gradient_transformation"):  # optax.MultiSteps and similar wrappers
    inner = inner.gradient_transformation()
  if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
    raise TypeError(f"{name}: inner must be an optax GradientTransformation (e.g. "
                    f"optax.adam(1e-3)); got {describe(inner)}.")
  if not isinstance(inner, optax.GradientTransformation):
    inner = optax.GradientTransformation(inner.init, inner.update)
  return optax.with_extra_args_support(inner)


def _check_allocate(allocate, name):
  if isinstance(allocate, str):
    if allocate not in _ALLOCATIONS:
      raise ValueError(f"{name}: allocate must be one of {sorted(_ALLOCATIONS)} or a callable "
                       f"(params, sparsity, where=...) -> pytree; got {allocate!r}.")
    return _ALLOCATIONS[allocate]
  if not callable(allocate):
    raise TypeError(f"{name}: allocate must be 'erk', 'uniform' or a callable such as "
                    f"jaxprune.allocate.erk; got {describe(allocate)}.")
  return allocate


def _check_key(key, name):
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.key(int(key))
  if is_array(key) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                        or (key.dtype == jnp.uint32 and tuple(key.shape) == (2,))):
    return key
  raise TypeError(f"{name}: key must be a jax.random.key, a jax.random.PRNGKey or an int seed; "
                  f"got {describe(key)}.")


def _check_int(value, what, name, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name}: {what} must be an int >= {minimum}; got {describe(value)}.")
  if value < minimum:
    raise ValueError(f"{name}: {what} must be >= {minimum}; got {value}.")
  return int(value)


def _drop_schedule(drop_fraction, drop_schedule, end, name):
  if callable(drop_schedule):
    return drop_schedule
  if drop_schedule not in (None,) + _DROP_SCHEDULES:
    raise ValueError(f"{name}: drop_schedule must be None/'cosine', 'constant' or a callable "
                     f"step -> fraction; got {drop_schedule!r}.")
  if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, numbers.Real) or not (
      0.0 <= float(drop_fraction) <= 1.0) or math.isnan(float(drop_fraction)):
    raise ValueError(f"{name}: drop_fraction must be a float in [0, 1] (fraction of active "
                     f"weights replaced per mask update); got {drop_fraction!r}.")
  if drop_schedule == "constant":
    value = jnp.float32(drop_fraction)
    return lambda step: value
  if end is None:
    raise ValueError(f"{name}: the default cosine drop schedule decays to 0 at end=, which is "
                     "missing. Pass end= (the step after which masks stay fixed; RigL uses 75% of "
                     "training), or drop_schedule='constant' or a callable.")
  return cosine_drop_fraction(float(drop_fraction), end)


def _placed_like_params(masks, params):
  """Masks placed with their param's sharding (eagerly; under jit the compiler places them)."""
  def place(m, p):
    if m is None or isinstance(p, jax.core.Tracer) or not isinstance(p, jax.Array):
      return m
    if isinstance(m, jax.core.Tracer):
      return m
    return jax.device_put(m, p.sharding)

  m_leaves = leaves_like(params, masks, name="masks")
  _, p_leaves, treedef = flatten_with_paths(params)
  return treedef.unflatten([place(m, p) for m, p in zip(m_leaves, p_leaves)])


def _replicate_single_device(tree, params):
  """Inner-state arrays left on one device (e.g. step counts) replicated on the params' mesh.

  A jitted update returns them replicated; placing them so at init keeps the state's sharding
  the same after init and after update, so a jitted training step is traced once.
  """
  mesh = mesh_of(params)
  if mesh is None:
    return tree
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(x):
    if (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
        and isinstance(x.sharding, jax.sharding.SingleDeviceSharding)):
      return jax.device_put(x, replicated)
    return x

  return jax.tree_util.tree_map(place, tree)
