"""What :func:`jaxprune.prune` checks and computes around its update: the parts of its factory.

Static checks run when ``prune`` is built or at ``init``; :func:`report` is the one jit-safe
runtime check (a host callback that runs only when something is wrong).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune import filters, masks as masks_lib
from jaxprune.core import (
    as_mask_leaf, at_path, check_sparsity, describe, flatten_with_paths, is_array,
    is_static_number, is_tracer, Keywords, leaves_like, listing)
from jaxprune.transforms._state import PruneState, zeros_count
from jaxprune.transforms._steps import UpdateSteps

_SELECTS = {"layerwise": masks_lib.topk, "global": masks_lib.global_topk}


def callable_or(fn, default: Callable, name: str) -> Callable:
  """``fn``, or ``default`` when it is None; a clear error when it is not callable."""
  if fn is None:
    return default
  if not callable(fn):
    raise TypeError(f"{name} must be a callable {name}(params, **extras) -> scores, e.g. "
                    f"jaxprune.scores.magnitude; got {describe(fn)}.")
  return fn


def select_fn(select, allocate) -> Callable:
  """The select callable for a name or a callable taking ``where=`` and ``previous=``."""
  if isinstance(select, str):
    if select not in _SELECTS:
      raise ValueError(f"select must be one of {sorted(_SELECTS)} or a callable "
                       f"select(scores, sparsity, where=..., previous=...); got {select!r}.")
    select = _SELECTS[select]
  if not callable(select):
    raise TypeError(f"select must be 'layerwise', 'global' or a callable; got "
                    f"{describe(select)}.")
  if allocate is not None and getattr(select, "func", select) is masks_lib.global_topk:
    raise ValueError(
        "prune: allocate= gives one sparsity per leaf, but select='global' ranks all leaves "
        "together with one sparsity. Use select='layerwise' with allocate=, or drop allocate=.")
  kw = Keywords.of(select, "select", positional=2)
  missing = sorted({"where", "previous"} - kw.accepted)
  if missing and not kw.takes_all:
    raise TypeError(
        f"{kw.name} must accept keyword arguments where= and previous= (the signature of "
        f"jaxprune.masks.topk); it lacks {missing}. Wrap it, e.g. lambda scores, sparsity, "
        "where, previous: my_select(scores, sparsity, previous=previous).")
  if allocate is not None and not callable(allocate):
    raise TypeError(f"allocate must be None or a callable like jaxprune.allocate.erk; got "
                    f"{describe(allocate)}.")
  return select


class Sparsity(NamedTuple):
  """The sparsity of ``prune``: ``(params, count) -> (select's sparsity, scalar value)``."""

  schedule: Callable | None  # step -> sparsity, or None for a constant
  constant: Any  # the checked constant (a float, or a traced 0-d array), when no schedule
  final: float | None
  allocate: Callable | None
  where: Any

  def __call__(self, params, count):
    if self.schedule is None:
      value = self.constant
    else:
      value = jnp.asarray(self.schedule(count))
      if value.ndim != 0:
        raise TypeError(f"a sparsity schedule must return a scalar; got {describe(value)}.")
      value = value.astype(jnp.float32)
    if self.allocate is None:
      return value, value
    _, _, treedef = flatten_with_paths(params)
    alloc = self.allocation(params)
    if isinstance(value, float):  # static: exact per-leaf counts in float64
      return treedef.unflatten(alloc), value
    final: Any = self.final  # set whenever allocate is
    ratio = value / jnp.float32(final) if final > 0 else jnp.zeros((), jnp.float32)
    return treedef.unflatten([None if a is None else jnp.float32(a) * ratio
                              for a in alloc]), value

  def allocation(self, params) -> list:
    """Per-leaf final sparsities from the shapes (recomputed per trace; pure Python)."""
    paths, leaves, _ = flatten_with_paths(params)
    allocate: Any = self.allocate  # set: allocation() runs only when it is
    values = leaves_like(params, allocate(params, self.final, where=self.where),
                         name="allocate(...) result")
    out = []
    for path, leaf, value in zip(paths, leaves, values):
      if value is not None:
        if not is_array(leaf):
          raise ValueError(f"allocate gave sparsity {value!r} at {at_path(path)}, which is not "
                           f"an array ({describe(leaf)}).")
        value = check_sparsity(value, path, "allocated sparsity")
        if not isinstance(value, float):
          raise TypeError(f"allocate must return static floats; got {describe(value)} at "
                          f"{at_path(path)}.")
      out.append(value)
    if all(v is None for v in out):
      raise ValueError("allocate returned None for every leaf: nothing would be pruned. Check "
                       "where=.")
    return out

  def chosen(self, params) -> list[bool]:
    if self.allocate is None:
      return filters.select(params, self.where)
    return [a is not None for a in self.allocation(params)]


def sparsity_fn(sparsity, allocate, steps: UpdateSteps, where, straight_through) -> Sparsity:
  """Checks ``sparsity`` (a schedule is sampled over ``steps``) and builds :class:`Sparsity`."""
  if not isinstance(straight_through, (bool, np.bool_)):
    raise TypeError(f"straight_through must be a bool; got {describe(straight_through)}.")
  if sparsity is None:
    raise TypeError("prune needs sparsity=: a float in [0, 1] (e.g. 0.9 for 90% zeros) or a "
                    "schedule such as jaxprune.schedules.polynomial(0.9, begin=0, end=10_000).")
  if callable(sparsity) and not is_array(sparsity):
    final = getattr(sparsity, "final", None)
    if final is None and steps.end is not None and is_static_number(steps.end):
      at_end = sample(sparsity, [int(steps.end)])
      final = None if at_end is None else float(at_end[0])
    checked = check_sampled(sparsity, steps, bool(straight_through))
    final = None if final is None else check_sparsity(float(final), "", "final sparsity")
    out = Sparsity(checked, None, final, allocate, where)
  else:
    if isinstance(sparsity, (bool, np.bool_)):
      raise TypeError(f"sparsity must be a float in [0, 1]; got a bool {sparsity!r}.")
    if not (is_static_number(sparsity) or is_array(sparsity)):
      raise TypeError(f"sparsity must be a float in [0, 1] or a schedule step -> sparsity; got "
                      f"{describe(sparsity)}.")
    value = check_sparsity(sparsity, "", "sparsity")
    out = Sparsity(None, value, value if isinstance(value, float) else None, allocate, where)
  if allocate is not None and out.final is None:
    raise ValueError(
        "prune: allocate= needs the final target sparsity, known before tracing: pass a float "
        "sparsity, a jaxprune.schedules schedule, or end= (the schedule is evaluated there).")
  return out


def sample(schedule, steps) -> np.ndarray | None:
  """The schedule's values at static ``steps``, computed eagerly (one vectorised call).

  None when the values are traced: a schedule that closes over an argument of an enclosing
  ``jax.jit`` (e.g. ``optax.polynomial_schedule(0, target, …)`` with ``target`` traced, so that
  one compilation serves every target) has no value before run time.
  """
  with jax.ensure_compile_time_eval():
    values = jax.vmap(schedule)(jnp.asarray(steps, jnp.int32))
  if np.ndim(values) != 1:
    raise TypeError(f"a sparsity schedule must return a scalar; got values of shape "
                    f"{np.shape(values)[1:]}.")
  if is_tracer(values):
    return None
  return np.asarray(values, np.float64)


def check_sampled(schedule, steps: UpdateSteps, straight_through: bool):
  """Raises when the schedule leaves [0, 1] or (masks never grow) decreases over the steps."""
  at = steps.sample()
  if at and steps.end is not None:
    at.append(int(steps.end))
  at = sorted({t for t in at if t < 2**31 - 1})
  if not at:
    return schedule
  values = sample(schedule, at)
  if values is None:  # traced: nothing to check before run time (as for a traced constant)
    return schedule
  bad = [(t, v) for t, v in zip(at, values) if not 0.0 <= v <= 1.0]
  if bad:
    raise ValueError(f"the sparsity schedule gives {bad[0][1]!r} at step {bad[0][0]}; "
                     "sparsities are fractions of zeros in [0, 1] (0.9 for 90%), not "
                     "percentages.")
  drops = [(a, b, x, y) for a, b, x, y in zip(at, at[1:], values, values[1:]) if y < x - 1e-6]
  if drops and not straight_through:
    a, b, x, y = drops[0]
    raise ValueError(f"the sparsity schedule decreases from {x:.6g} at step {a} to {y:.6g} at "
                     f"step {b}, but masks never grow (pruned weights stay pruned): use a "
                     "non-decreasing schedule, or straight_through=True.")
  return schedule


def initial_masks(params, sparsity: Sparsity, where):
  """All-True bool masks (placed like the params) at the leaves that are pruned."""
  _, leaves, treedef = flatten_with_paths(params)
  return treedef.unflatten([jnp.ones_like(x, dtype=jnp.bool_) if c else None
                            for x, c in zip(leaves, sparsity.chosen(params))])


def select_output(select, score, keywords, params, masks, sparsity, where) -> None:
  """Runs ``score`` and ``select`` abstractly (``jax.eval_shape``: no FLOPs) once at init.

  The masks must be shaped like the init masks. Float32 stand-ins replace the scores when
  ``score`` needs an extra argument; nothing is checked when ``select`` needs one.
  """
  score_kw, select_kw = keywords
  if select_kw.required:
    return

  def run(params, masks):
    if score_kw.required:
      scores = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32) if is_array(x) else None,
                            params)
    else:
      scores = score(params)
    new = select(scores, sparsity(params, zeros_count())[0], where=where, previous=masks)
    return conform(new, masks)

  jax.eval_shape(run, params, masks)


def conform(new, old, keep=None):
  """The masks ``select`` returned, checked against the state's and made bool (non-zero = kept).

  Where ``keep`` (a traced bool) is True, the state's masks ``old`` are returned instead.
  """
  if jax.tree.structure(new) != jax.tree.structure(old):
    raise ValueError(
        "select returned masks for other leaves than the state holds (all leaves chosen by "
        f"where=). Expected {listing(_shapes(old))}; got {listing(_shapes(new))}. Make select "
        "prune exactly the leaves chosen by where= (pass where= through to it).")
  paths, news, treedef = flatten_with_paths(new)
  out = [as_mask_leaf(path, n, o, what="the masks select returned")
         for path, n, o in zip(paths, news, treedef.flatten_up_to(old))]
  if keep is not None:
    out = [jnp.where(keep, o, n) for n, o in zip(out, treedef.flatten_up_to(old))]
  return treedef.unflatten(out)


def _shapes(masks):
  paths, leaves, _ = flatten_with_paths(masks, is_leaf=lambda x: x is None)
  return [f"{p}: {'None' if x is None else tuple(x.shape)}" for p, x in zip(paths, leaves)]


def update_args(params, state) -> None:
  """The static checks of ``prune``'s ``update`` arguments."""
  if params is None:
    raise ValueError("jaxprune.prune needs the current params to prune them: call "
                     "tx.update(updates, opt_state, params) (params as the third argument).")
  if not isinstance(state, PruneState):
    raise TypeError(f"jaxprune.prune got a state of type {type(state).__name__}; expected the "
                    "PruneState returned by its init (or a previous update).")
  leaves_like(params, state.masks, name="PruneState.masks")  # clear error on a mismatch


def kept_counts(masks):
  """Per pruned leaf (flattening order), the entries ``masks`` keep: an int32 vector.

  Leaves of 2**31 entries or more are not counted (-1: never checked). One entry (-1) when
  no leaf is pruned.
  """
  leaves = [m for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None) if m is not None]
  counts = [jnp.sum(m, dtype=jnp.int32) if m.size < 2**31 else jnp.int32(-1) for m in leaves]
  return jnp.stack(counts or [jnp.int32(-1)])


def moved(params, masks, kept):
  """Per pruned leaf: more non-zero weights than the masks ``kept`` (a bool vector).

  If every pruned weight is 0 a leaf has at most ``kept`` non-zeros, so True means pruned
  weights moved. Counts only read the params: a check that read the masks inside the
  conditional that recomputes them would make XLA copy the masks on every step (issue 10.10).
  """
  leaves = [p for p, m in zip(flatten_with_paths(params)[1],
                              leaves_like(params, masks, name="masks")) if m is not None]
  if not leaves:
    return jnp.zeros((1,), jnp.bool_)
  nonzero = jnp.stack([jnp.sum(p != 0, dtype=jnp.int32) if p.size < 2**31 else jnp.int32(-1)
                       for p in leaves])
  return (kept >= 0) & (nonzero > kept)


def report(ok, misplaced, value, params, masks, count) -> None:
  """Raises or warns from the host (``jax.debug.callback``) only when something is wrong.

  ``ok`` False (a sparsity that is NaN or outside [0, 1] on a mask-update step) raises: the
  step fails with a ``JaxRuntimeError``. ``misplaced`` (pruned weights found non-zero on this
  mask-update step) warns (:class:`MisplacedPruneWarning`): ``prune`` is not the last
  transform before ``apply_updates``. Nothing runs on the host when all is well.
  """
  names = [p for p, m in zip(flatten_with_paths(params)[0],
                             leaves_like(params, masks, name="masks")) if m is not None]

  def fail(ok, misplaced, value, count):
    if not ok:
      raise ValueError(
          f"jaxprune.prune: the sparsity at step {int(count)} is {float(value)!r}, not in [0, 1] "
          "(NaN, or a percentage?); the masks were left unchanged. Fix the schedule or the "
          "injected sparsity.")
    warnings.warn(
        f"jaxprune.prune: weights it pruned are no longer 0 at step {int(count)} (at "
        f"{listing([n for n, bad in zip(names, misplaced) if bad])}): prune must be the last "
        "transform of the optax.chain, and its updates applied as they are "
        "(optax.apply_updates), e.g. optax.chain(optax.adamw(1e-3), jaxprune.prune(...)). "
        "Wrappers that move the weights themselves (optax.contrib.schedule_free, "
        "optax.lookahead) are not supported around prune. (Also seen when updates are not "
        "applied between calls, or weights are not finite.)", MisplacedPruneWarning,
        stacklevel=2)

  value = jnp.asarray(value, jnp.float32)
  lax.cond(~ok | jnp.any(misplaced),
           lambda: jax.debug.callback(fail, ok, misplaced, value, count), lambda: None)


class MisplacedPruneWarning(UserWarning):
  """Weights pruned by ``jaxprune.prune`` moved: it is not the last transform of the chain.

  Turn it into an error with ``warnings.simplefilter("error", MisplacedPruneWarning)`` (the
  step then raises a ``JaxRuntimeError``).

  >>> import warnings
  >>> from jaxprune import transforms
  >>> issubclass(transforms.MisplacedPruneWarning, UserWarning)
  True
  """
