"""``prune``: an optax transform that recomputes masks on schedule, inside jit, and keeps pruned
weights at exactly zero.

The state (:class:`PruneState`) holds a step count and the masks (all True at init). On a
mask-update step (``begin <= count <= end`` and ``(count - begin) % every == 0``, see
:mod:`jaxprune.transforms`), inside ``lax.cond`` (scores are computed on those steps only),
``masks = select(score(params, **extras), sparsity(count), where=where, previous=masks)``.
Entries pruned before stay pruned, so masks never grow, and every pruned leaf keeps exactly
``n - round(s * n)`` entries. The returned updates are such that
``optax.apply_updates(params, updates)`` is **exactly 0** at every pruned entry (for finite
params), whatever came before in the chain, with no call after it.

**Extras.** ``tx.update(updates, state, params, **extras)`` passes each extra (``grads=``,
``batch=``, ``key=``, ...) to ``score`` and to ``select`` when they name it in their signature
(all of them to a consumer taking ``**kwargs``); a missing required one is a ``ValueError``
(:class:`jaxprune.core.Keywords`, read once when ``prune`` is built).

**Allocation.** With ``allocate`` (e.g. ``jaxprune.allocate.erk``), each leaf's final sparsity
is computed from the shapes for the final target (a float ``sparsity``, a jaxprune schedule's
``final``, or the schedule's value at ``end``); at step ``t`` it is scaled by
``sparsity(t) / final``, so all leaves ramp up together.

**Checks.** A schedule is sampled when ``prune`` is built, at ``begin``, ``end`` and ~40
update steps between: a value outside [0, 1] (a percentage, say) or, without
``straight_through``, a decreasing schedule (masks never grow) is a ``ValueError``. A traced
sparsity that is NaN or outside [0, 1] on an update step leaves the masks unchanged and raises
a ``JaxRuntimeError`` from the host (``jax.debug.callback``, only when it happens). On every
mask-update step, ``prune`` also checks that the weights it pruned before are still exactly 0
(each pruned leaf has at most as many non-zeros as its mask kept; steps between mask updates
are not checked, so misuse is reported at the next mask-update step, not the next step): if
not, it was not the last transform of the chain (``chain(prune(...), adamw(...))``), or it
is wrapped by an optimizer that moves the weights itself (``schedule_free(chain(..., prune))``,
``lookahead``), and it warns, saying so (``MisplacedPruneWarning``; make it an error with
``warnings.simplefilter("error", jaxprune.transforms.MisplacedPruneWarning)``).
Schedule-free optimizers keep a second, dense copy of the weights: they are not supported
(:func:`masks_of` refuses their states).

**Straight-through.** With ``straight_through=True`` the updates are not masked: the dense
weights keep training, the masks are recomputed from them on every update step (without
``previous=``, so entries may come back), and the forward pass uses
``jaxprune.masked_params(params, opt_state)``, whose gradient passes straight through::

    grads = jax.grad(lambda p: loss_fn(jaxprune.masked_params(p, opt_state), batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)

Works under ``jax.jit`` (one trace for all steps), ``jax.eval_shape``, ``optax.MultiSteps``,
``optax.inject_hyperparams`` (``inject_hyperparams(jaxprune.prune)(sparsity=0.5)`` injects
``sparsity``; give callables through ``static_args``), and on sharded params (masks keep the
params' sharding).
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import optax
from jax import lax

from jaxprune import filters, scores as scores_lib
from jaxprune.core import Keywords, replicated_like
from jaxprune.transforms import _prune_checks as checks
from jaxprune.transforms._state import PruneState, increment, masked_updates, zeros_count
from jaxprune.transforms._steps import UpdateSteps

__all__ = ["PruneState", "prune"]


def prune(score: Callable | None = None, *, sparsity: Any = None, every: int = 100,
          begin: int = 0, end: int | None = None, select: str | Callable = "layerwise",
          allocate: Callable | None = None, where: filters.FilterLike = None,
          straight_through: bool = False) -> optax.GradientTransformationExtraArgs:
  """Pruning during training, as the **last** transform of an ``optax.chain``.

  See :mod:`jaxprune.transforms._prune` for what happens at each step and what is checked.

  Args:
    score: ``score(params, **extras) -> scores`` (higher = kept); default
      :func:`jaxprune.scores.magnitude`. E.g. ``jaxprune.scores.saliency`` with ``grads=``.
    sparsity: a float in [0, 1], or a schedule ``step -> sparsity`` (:mod:`jaxprune.schedules`
      or any optax schedule), evaluated at the update's ``count``. Required.
    every, begin, end: mask-update steps (``end=None``: no end; inclusive otherwise).
    select: ``"layerwise"`` (:func:`jaxprune.masks.topk`), ``"global"``
      (:func:`jaxprune.masks.global_topk`) or ``select(scores, sparsity, *, where, previous)``.
    allocate: ``None`` or ``allocate(params, sparsity, where=...)`` (:mod:`jaxprune.allocate`);
      only with a per-leaf ``select``.
    where: which leaves are pruned (default ``ndim >= 2``); see :mod:`jaxprune.filters`.
    straight_through: train dense weights, mask only the forward pass.

  >>> import jax, jax.numpy as jnp, optax, jaxprune
  >>> params = {"w": jnp.arange(1., 17.).reshape(4, 4), "b": jnp.ones(4)}
  >>> tx = optax.chain(optax.adam(0.1), jaxprune.transforms.prune(sparsity=0.75, every=10))
  >>> updates, state = jax.jit(tx.update)(params, tx.init(params), params)
  >>> params = optax.apply_updates(params, updates)
  >>> int((params["w"] != 0).sum()), jaxprune.transforms.masks_of(state)["b"]
  (4, None)
  """
  score = checks.callable_or(score, scores_lib.magnitude, "score")
  select = checks.select_fn(select, allocate)
  steps = UpdateSteps.of(begin=begin, every=every, end=end, context="prune")
  where = filters.resolve(where)
  sparsity_at = checks.sparsity_fn(sparsity, allocate, steps, where, straight_through)
  kw = (Keywords.of(score, "score"),
        Keywords.of(select, "select", positional=2, reserved=("where", "previous")))

  def init_fn(params):
    masks = checks.initial_masks(params, sparsity_at, where)
    checks.select_output(select, score, kw, params, masks, sparsity_at, where)
    count, kept = replicated_like((zeros_count(), checks.kept_counts(masks)), params)
    target = replicated_like(jnp.zeros((), jnp.float32), params)  # all True: sparsity 0
    return PruneState(count, masks, target, kept, jnp.zeros_like(kept, jnp.bool_))

  def update_fn(updates, state, params=None, **extra_args):
    checks.update_args(params, state)
    score_args, select_args = (k.pick(extra_args) for k in kw)
    sparsity_now, value = sparsity_at(params, state.count)
    value = jnp.asarray(value, jnp.float32)
    ok = (value >= 0) & (value <= 1)  # False for NaN: the masks are kept, and report raises

    def recompute(masks, kept, misplaced):  # on mask-update steps only
      if not straight_through:
        misplaced = checks.moved(params, masks, kept)
      new = select(score(params, **score_args), sparsity_now, where=where,
                   previous=None if straight_through else masks, **select_args)
      new = checks.conform(new, masks, keep=~ok)
      return new, checks.kept_counts(new), misplaced

    update = steps(state.count)
    masks, kept, misplaced = lax.cond(update, recompute, lambda *s: s, state.masks, state.kept,
                                      state.misplaced)
    checks.report(ok | ~update, misplaced & update, value, params, masks, state.count)
    if not straight_through:
      updates = masked_updates(updates, params, masks)
    target = jnp.where(update & ok, value, state.sparsity)  # what the masks were computed for
    return updates, PruneState(increment(state.count), masks, target, kept, misplaced)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
