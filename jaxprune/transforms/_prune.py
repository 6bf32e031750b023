"""``prune``: an optax transform that recomputes masks on schedule, inside jit, and keeps pruned
weights at exactly zero."""

from __future__ import annotations

import functools
import inspect
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxprune import filters, masks as masks_lib, scores as scores_lib
from jaxprune.core import (
    at_path, check_sparsity, describe, flatten_with_paths, is_array, is_static_number,
    leaves_like, listing)
from jaxprune.transforms._state import (
    PruneState, increment, masked_params, masked_updates, masks_of, placed_like, zeros_count)

__all__ = ["PruneState", "masked_params", "masks_of", "prune"]

_SELECTS = {"layerwise": masks_lib.topk, "global": masks_lib.global_topk}


def prune(score: Callable | None = None, sparsity: Any = None, every: int = 100,
          begin: int = 0, end: int | None = None, select: str | Callable = "layerwise",
          allocate: Callable | None = None, where: filters.FilterLike = None,
          straight_through: bool = False) -> optax.GradientTransformationExtraArgs:
  """Pruning during training, as the **last** transform of an ``optax.chain``.

  The state (:class:`PruneState`) holds a step count and the masks (all True at init). On
  *update steps* (``begin <= count <= end`` and ``(count - begin) % every == 0``) the masks are
  recomputed inside ``lax.cond`` (scores are computed on those steps only):
  ``select(score(params, **extras), sparsity(count), where=where, previous=masks)``. Entries
  pruned before stay pruned, so masks never grow, and every pruned leaf keeps exactly
  ``n - round(s * n)`` entries. The returned updates are such that
  ``optax.apply_updates(params, updates)`` is **exactly 0** at every pruned entry, whatever
  came before in the chain (momentum, Adam, weight decay, clipping), with no call after it.

  Extra keyword arguments of ``tx.update(updates, state, params, **extras)`` (``grads=``,
  ``batch=``, ``key=``, ...) are passed to ``score`` when its signature accepts them (all of
  them if it takes ``**kwargs``); a missing required one is a ``ValueError``.

  With ``allocate`` (e.g. ``jaxprune.allocate.erk``), per-leaf sparsities are computed once,
  from the shapes, for the final target sparsity (a float ``sparsity``, a jaxprune schedule's
  ``final``, or the schedule's value at ``end``); at step ``t`` each leaf's sparsity is its
  allocation scaled by ``sparsity(t) / final``, so all leaves ramp up together.

  With ``straight_through=True`` the updates are not masked: the dense weights keep training,
  the masks are recomputed from them on every update step (without ``previous=``, so entries
  may come back), and the forward pass uses ``jaxprune.masked_params(params, opt_state)``, whose
  gradient passes straight through to the dense weights::

      def loss(params, opt_state, batch):
        return loss_fn(jaxprune.masked_params(params, opt_state), batch)
      grads = jax.grad(loss)(params, opt_state, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)   # dense weights
      # evaluate / export jaxprune.masked_params(params, opt_state)

  The zeros are exact for finite params: an additive update cannot bring an ``inf`` or ``NaN``
  weight to 0. Outside jit, the update-step test runs on the host and the scores are computed
  on update steps only, too.

  Works under ``jax.jit`` (one trace for all steps), ``jax.eval_shape``, ``optax.MultiSteps``
  and ``optax.inject_hyperparams`` (its defaults are not callables, so
  ``optax.inject_hyperparams(jaxprune.prune)(sparsity=0.5)`` injects ``sparsity``; give other
  callables through ``static_args``), and on sharded params (masks keep the params' sharding).

  Args:
    score: ``score(params, **extras) -> scores pytree`` (higher = kept); default
      :func:`jaxprune.scores.magnitude`. E.g. ``jaxprune.scores.saliency`` with ``grads=``.
    sparsity: target sparsity: a float in [0, 1] (constant), or a schedule ``step -> sparsity``
      (:mod:`jaxprune.schedules` or any optax schedule), evaluated at the update's ``count``.
    every: steps between mask updates (``>= 1``).
    begin: first update step.
    end: last possible update step (``None``: no end; masks are then recomputed every ``every``
      steps forever, which is harmless but costs the score).
    select: ``"layerwise"`` (:func:`jaxprune.masks.topk`, the default), ``"global"``
      (:func:`jaxprune.masks.global_topk`), or any callable
      ``select(scores, sparsity, where=..., previous=...) -> masks`` (e.g.
      ``functools.partial(jaxprune.masks.global_topk, normalize="l1")``).
    allocate: ``None`` or ``allocate(params, sparsity, where=...) -> pytree of float|None``
      (:mod:`jaxprune.allocate`); only with a per-leaf ``select`` (not "global").
    where: which leaves are pruned (default ``ndim >= 2``); see :mod:`jaxprune.filters`.
    straight_through: train dense weights, mask only the forward pass (see above).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` needs ``params``.

  >>> import jax, jax.numpy as jnp, optax, jaxprune
  >>> params = {"w": jnp.arange(1., 17.).reshape(4, 4), "b": jnp.ones(4)}
  >>> tx = optax.chain(optax.adam(0.1), jaxprune.transforms.prune(sparsity=0.75, every=10))
  >>> state = tx.init(params)
  >>> updates, state = jax.jit(tx.update)(params, state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> int((params["w"] != 0).sum()), jaxprune.transforms.masks_of(state)["b"]
  (4, None)
  """
  score_fn = _check_score(score)
  accepted, required, takes_all = _score_arguments(score_fn)
  schedule, static_value, final = _check_schedule(sparsity, end)
  every = _check_int(every, "every", 1)
  begin = _check_int(begin, "begin", 0)
  if end is not None:
    end = _check_int(end, "end", 0)
    if is_static_number(end) and is_static_number(begin) and int(end) < int(begin):
      raise ValueError(f"prune: end={int(end)} is before begin={int(begin)}; masks would never "
                       "be updated. Use end >= begin, or end=None for no end.")
  select_fn = _check_select(select, allocate)
  where_filter = filters.resolve(where)
  if allocate is not None and not callable(allocate):
    raise TypeError(f"allocate must be None or a callable like jaxprune.allocate.erk; got "
                    f"{describe(allocate)}.")
  if allocate is not None and final is None:
    raise ValueError(
        "prune: allocate= needs the final target sparsity, known before tracing: pass a float "
        "sparsity, a jaxprune.schedules schedule, or end= (the schedule is evaluated there).")
  if not isinstance(straight_through, (bool, np.bool_)):
    raise TypeError(f"straight_through must be a bool; got {describe(straight_through)}.")

  allocations: dict = {}

  def allocation(params):
    """Per-leaf final sparsities (a list aligned to the params' leaves), or None."""
    if allocate is None:
      return None
    _, leaves, treedef = flatten_with_paths(params)
    key = (treedef, tuple(tuple(getattr(x, "shape", ())) for x in leaves))
    if key not in allocations:
      allocations[key] = _check_allocation(params, allocate(params, final, where=where_filter))
    return allocations[key]

  def sparsity_at(params, count):
    """The ``sparsity`` argument of ``select`` at step ``count`` (scalar or per-leaf)."""
    value = static_value if schedule is None else _as_float32(schedule(count))
    alloc = allocation(params)
    if alloc is None:
      return value
    _, _, treedef = flatten_with_paths(params)
    if schedule is None:
      return treedef.unflatten(alloc)
    ratio = value / jnp.float32(final) if final > 0 else jnp.zeros((), jnp.float32)
    return treedef.unflatten([None if a is None else jnp.float32(a) * ratio for a in alloc])

  def init_fn(params):
    alloc = allocation(params)
    _, leaves, treedef = flatten_with_paths(params)
    if alloc is None:
      chosen = filters.select(params, where_filter)
    else:
      chosen = [a is not None for a in alloc]
    masks = treedef.unflatten(
        [jnp.ones_like(x, dtype=jnp.bool_) if c else None for x, c in zip(leaves, chosen)])
    _check_select_output(select_fn, None if required else score_fn, params, masks,
                         sparsity_at(params, zeros_count()), where_filter)
    return PruneState(count=placed_like(zeros_count(), params), masks=masks)

  def update_fn(updates, state, params=None, **extras):
    if params is None:
      raise ValueError(
          "jaxprune.prune needs the current params to prune them: call "
          "tx.update(updates, opt_state, params) (params as the third argument).")
    if not isinstance(state, PruneState):
      raise TypeError(f"jaxprune.prune got a state of type {type(state).__name__}; expected the "
                      "PruneState returned by its init (or a previous update).")
    leaves_like(params, state.masks, name="PruneState.masks")  # clear error on a mismatch
    score_args = _score_extras(score_fn, extras, accepted, required, takes_all)
    count = state.count
    is_update = (count >= begin) & ((count - begin) % every == 0)
    if end is not None:
      is_update = is_update & (count <= end)

    def recompute(old):
      new = select_fn(score_fn(params, **score_args), sparsity_at(params, count),
                      where=where_filter, previous=None if straight_through else old)
      return _conform(new, old)

    if isinstance(is_update, jax.core.Tracer):
      new_masks = lax.cond(is_update, recompute, lambda old: old, state.masks)
    else:  # eager: no trace of the scores on other steps
      new_masks = recompute(state.masks) if bool(is_update) else state.masks
    if not straight_through:
      updates = masked_updates(updates, params, new_masks)
    return updates, PruneState(count=increment(count), masks=new_masks)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_score(score):
  if score is None:
    return scores_lib.magnitude
  if not callable(score):
    raise TypeError(f"score must be a callable score(params, **extras) -> scores, e.g. "
                    f"jaxprune.scores.magnitude; got {describe(score)}.")
  return score


def _score_arguments(score):
  """(accepted keyword names, required keyword names, takes **kwargs) of a score callable."""
  try:
    signature = inspect.signature(score)
  except (TypeError, ValueError):  # builtins and other callables without a signature
    return frozenset(), frozenset(), True
  parameters = list(signature.parameters.values())
  kinds = inspect.Parameter
  positional = [p for p in parameters if p.kind in (kinds.POSITIONAL_ONLY,
                                                    kinds.POSITIONAL_OR_KEYWORD)]
  if not positional and not any(p.kind == kinds.VAR_POSITIONAL for p in parameters):
    raise TypeError(f"score {_name(score)} must take the params as its first positional "
                    f"argument; its signature is {signature}.")
  rest = [p for p in parameters if not positional or p is not positional[0]]
  bad = [p.name for p in rest if p.kind == kinds.POSITIONAL_ONLY and p.default is p.empty]
  if bad:
    raise TypeError(f"score {_name(score)} has required positional-only arguments {bad}, which "
                    "prune cannot pass (extras are passed by keyword). Wrap it: "
                    "score=lambda params, grads: my_score(params, grads).")
  named = [p for p in rest if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
  accepted = frozenset(p.name for p in named)
  required = frozenset(p.name for p in named if p.default is p.empty)
  takes_all = any(p.kind == kinds.VAR_KEYWORD for p in parameters)
  return accepted, required, takes_all


def _score_extras(score, extras, accepted, required, takes_all):
  missing = sorted(required - set(extras))
  if missing:
    raise ValueError(
        f"score {_name(score)} needs the argument(s) {missing}, which were not passed to "
        f"tx.update. Pass them as keyword arguments: tx.update(updates, opt_state, params, "
        f"{', '.join(f'{m}={m}' for m in missing)}). Extra arguments given: {sorted(extras)}.")
  if takes_all:
    return dict(extras)
  return {k: v for k, v in extras.items() if k in accepted}


def _name(fn) -> str:
  if isinstance(fn, functools.partial):
    return f"partial({_name(fn.func)})"
  return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _check_int(value, name: str, minimum: int):
  """A static int >= minimum, or an integer 0-d array (traced under inject_hyperparams)."""
  if isinstance(value, bool):
    raise TypeError(f"prune: {name} must be an int; got a bool {value!r}.")
  if isinstance(value, (numbers.Integral, np.integer)):
    if value < minimum:
      raise ValueError(f"prune: {name} must be >= {minimum}; got {value}.")
    return int(value)
  if is_array(value) and value.ndim == 0 and jnp.issubdtype(value.dtype, jnp.integer):
    if is_static_number(value) and int(value) < minimum:
      raise ValueError(f"prune: {name} must be >= {minimum}; got {int(value)}.")
    return value
  raise TypeError(f"prune: {name} must be an int (a step number); got {describe(value)}.")


def _as_float32(value):
  value = jnp.asarray(value)
  if value.ndim != 0:
    raise TypeError(f"a sparsity schedule must return a scalar; got {describe(value)}.")
  return value.astype(jnp.float32)


def _check_schedule(sparsity, end):
  """Returns (schedule or None, static/traced constant or None, final float or None)."""
  if sparsity is None:
    raise TypeError("prune needs sparsity=: a float in [0, 1] (e.g. 0.9 for 90% zeros) or a "
                    "schedule such as jaxprune.schedules.polynomial(0.9, begin=0, end=10_000).")
  if callable(sparsity) and not is_array(sparsity):
    final = getattr(sparsity, "final", None)
    if final is None and is_static_number(end):
      final = _static_value(sparsity, end, "end")
    if final is not None:
      final = check_sparsity(float(final), "", "the schedule's final sparsity")
    return sparsity, None, final
  if isinstance(sparsity, (bool, np.bool_)):
    raise TypeError(f"sparsity must be a float in [0, 1]; got a bool {sparsity!r}.")
  if not (is_static_number(sparsity) or is_array(sparsity)):
    raise TypeError(f"sparsity must be a float in [0, 1] or a schedule step -> sparsity; got "
                    f"{describe(sparsity)}.")
  value = check_sparsity(sparsity, "", "sparsity")
  return None, value, (value if isinstance(value, float) else None)


def _static_value(schedule, step, name):
  """Evaluates a schedule at a static step, before tracing, and checks it is in [0, 1]."""
  with jax.ensure_compile_time_eval():
    try:
      value = jnp.asarray(schedule(jnp.asarray(int(step), jnp.int32)))
    except Exception as err:  # a schedule that cannot run eagerly: no static check
      del err
      return None
  if value.ndim != 0 or isinstance(value, jax.core.Tracer):
    return None
  value = float(value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"the sparsity schedule gives {value!r} at {name}={int(step)}; sparsities "
                     "are fractions of zeros in [0, 1] (0.9 for 90%), not percentages.")
  return value


def _check_select(select, allocate):
  if isinstance(select, str):
    if select not in _SELECTS:
      raise ValueError(f"select must be one of {sorted(_SELECTS)} or a callable "
                       f"select(scores, sparsity, where=..., previous=...); got {select!r}.")
    select = _SELECTS[select]
  if not callable(select):
    raise TypeError(f"select must be 'layerwise', 'global' or a callable; got "
                    f"{describe(select)}.")
  base = select.func if isinstance(select, functools.partial) else select
  if allocate is not None and base is masks_lib.global_topk:
    raise ValueError(
        "prune: allocate= gives one sparsity per leaf, but select='global' ranks all leaves "
        "together with one sparsity. Use select='layerwise' with allocate=, or drop allocate=.")
  try:
    parameters = inspect.signature(select).parameters
  except (TypeError, ValueError):
    return select
  names = set(parameters)
  if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
    missing = sorted({"where", "previous"} - names)
    if missing:
      raise TypeError(
          f"select {_name(select)} must accept keyword arguments where= and previous= (the "
          f"signature of jaxprune.masks.topk); it lacks {missing}. Wrap it, e.g. "
          "lambda scores, sparsity, where, previous: my_select(scores, sparsity, "
          "previous=previous).")
  return select


def _check_allocation(params, alloc):
  paths, leaves, _ = flatten_with_paths(params)
  values = leaves_like(params, alloc, name="allocate(...) result")
  out = []
  for path, leaf, value in zip(paths, leaves, values):
    if value is None:
      out.append(None)
      continue
    if not is_array(leaf):
      raise ValueError(f"allocate gave sparsity {value!r} at {at_path(path)}, which is not an "
                       f"array ({describe(leaf)}).")
    value = check_sparsity(value, path, "allocated sparsity")
    if not isinstance(value, float):
      raise TypeError(f"allocate must return static floats; got {describe(value)} at "
                      f"{at_path(path)}.")
    out.append(value)
  if all(v is None for v in out):
    raise ValueError("allocate returned None for every leaf: nothing would be pruned. Check "
                     "where=.")
  return out


def _describe_masks(masks):
  paths, leaves, _ = flatten_with_paths(masks, is_leaf=lambda x: x is None)
  return [f"{p}: {'None' if x is None else tuple(x.shape)}" for p, x in zip(paths, leaves)]


def _check_select_output(select_fn, score_fn, params, masks, sparsity, where_filter):
  """Runs score and select abstractly at init: the masks must be shaped like the init masks.

  The score runs when it needs no extra argument; otherwise float32 stand-ins are used.
  """
  def scores(params):
    if score_fn is not None:
      return score_fn(params)
    return jax.tree.map(
        lambda x: jnp.zeros(x.shape, jnp.float32) if is_array(x) else None, params)

  def run(params, masks):
    return select_fn(scores(params), sparsity, where=where_filter, previous=masks)

  out = jax.eval_shape(run, params, masks)
  _conform(out, masks)


def _conform(new, old):
  """Checks the masks computed by ``select`` against the state's masks; returns them as bool."""
  if jax.tree.structure(new) != jax.tree.structure(old):
    raise ValueError(
        "select returned masks for other leaves than the state holds (all leaves chosen by "
        f"where=). Expected {listing(_describe_masks(old))}; got "
        f"{listing(_describe_masks(new))}. Make select prune exactly the leaves chosen by "
        "where= (pass where= through to it).")
  paths, news, treedef = flatten_with_paths(new)
  olds = treedef.flatten_up_to(old)
  out = []
  for path, n, o in zip(paths, news, olds):
    if not is_array(n) or tuple(n.shape) != tuple(o.shape):
      raise ValueError(f"select returned {describe(n)} at {at_path(path)}; expected a bool "
                       f"mask of shape {tuple(o.shape)}.")
    out.append(n if n.dtype == jnp.bool_ else n != 0)
  return treedef.unflatten(out)
