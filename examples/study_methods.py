"""The study's methods: a registry of every family jaxprune offers, as the study runs them.

Each :class:`Method` turns the trained dense model of one seed (or its initial weights) into one
pruned model per target sparsity. Families:

* ``one-shot``: a score of the dense model (``jaxprune.scores``), masks per layer or global,
  optionally a change of the kept weights (``jaxprune.compensate``), then fine-tuning with the
  mask kept;
* ``training``: pruning while training (``jaxprune.prune`` GMP and straight-through, RigL, SET,
  lottery tickets);
* ``regularization``: a proximal penalty (``jaxprune.regularize``) drives weights or whole
  channels to 0 during training; the sparsity it reaches is recorded, then a global magnitude
  cut reaches each target (its zeros stay pruned) before fine-tuning.

Structured removal and quantisation take the dense and pruned models of these runs; they live in
``study.py``. Add a method with :func:`register`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import common
import jax
import jax.numpy as jnp
import optax

import jaxprune

FAMILIES = ("one-shot", "training", "regularization")


@dataclasses.dataclass(frozen=True)
class Method:
  """One way of pruning.

  A one-shot method gives ``score(ctx, params, key) -> scores`` (computed once per dense
  model), ``select`` ("layerwise": ``jaxprune.masks.topk``, "global": ``global_topk``) and
  optionally ``after(ctx, params, masks) -> params``. Every other method gives
  ``run(ctx, sparsities, key) -> [(params, masks, info), ...]``, one entry per sparsity in
  order; ``info`` is a dict of extra numbers for the JSON (e.g. the sparsity a penalty reached).

  Attributes:
    name: the name on the command line and in the tables.
    family: one of :data:`FAMILIES`.
    description: one line for ``--help``, the JSON and the report.
    reference: the published figure to read the result against ('' when there is none).
    score, select, after: the one-shot parts.
    run: the part of every other family.
    default: part of the default set of methods.
  """
  name: str
  family: str
  description: str
  reference: str = ""
  score: Callable | None = None
  select: str = "layerwise"
  after: Callable | None = None
  run: Callable | None = None
  default: bool = True


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds ``method`` to :data:`METHODS` (replacing one of the same name)."""
  if method.family not in FAMILIES:
    raise ValueError(f"Method.family must be one of {FAMILIES}; got {method.family!r}.")
  if method.family == "one-shot" and method.score is None:
    raise ValueError(f"one-shot method {method.name!r} needs score=.")
  if method.family != "one-shot" and method.run is None:
    raise ValueError(f"{method.family} method {method.name!r} needs run=.")
  if method.select not in ("layerwise", "global"):
    raise ValueError(f"Method.select must be 'layerwise' or 'global'; got {method.select!r}.")
  METHODS[method.name] = method
  return method


@dataclasses.dataclass
class Context:
  """What the methods see: model, loss, data splits, settings, the seed's params, trainers.

  ``x_calib``/``y_calib`` are held out of training: data-based scores and ``compensate`` are
  calibrated on them; the test set is only ever used to measure.
  """
  config: Any
  model: Any
  loss_fn: Callable
  x_train: jax.Array
  y_train: jax.Array
  x_calib: jax.Array
  y_calib: jax.Array
  graph: Any = None
  init_params: Any = None
  dense_params: Any = None
  trainers: dict = dataclasses.field(default_factory=dict)

  def apply_fn(self, params, x):
    return self.model.apply({"params": params}, x)

  def trainer(self, name, tx, steps, **options):
    """A compiled ``common.make_trainer`` cached under ``name`` (one compilation per seed run)."""
    if name not in self.trainers:
      self.trainers[name] = common.make_trainer(
          self.loss_fn, tx, batch_size=self.config.batch_size, steps=steps, **options)
    return self.trainers[name]

  def finetune(self, params, masks, key):
    """``config.finetune`` AdamW steps with ``masks`` kept (pruned weights stay exactly 0)."""
    if not self.config.finetune:
      return params
    run = self.trainer("finetune", self.config.optimizer(), self.config.finetune)
    return run(params, None, key, self.x_train, self.y_train, masks)[0]


# --------------------------------------------------------------------------------------------
# One-shot scores.


def _calib_grads(ctx, params):
  return jax.grad(ctx.loss_fn)(params, ctx.x_calib, ctx.y_calib)


def _fisher_obd(ctx, params, key):
  del key  # the Fisher diagonal of a softmax model is exact: no probes
  return jaxprune.scores.obd(ctx.loss_fn, params, ctx.x_calib, ctx.y_calib, method="fisher",
                             batch_size=256)


def _wanda(ctx, params, key):
  del key
  norms = jaxprune.scores.input_norms(ctx.apply_fn, params, ctx.x_calib)
  # Leaves input_norms cannot follow (None) fall back to |w|: no leaf is silently left dense.
  return jax.tree.map(lambda s, w: jnp.abs(w) if s is None else s,
                      jaxprune.scores.wanda(params, norms), params,
                      is_leaf=lambda x: x is None)


def _compensate(ctx, params, masks):
  # The defaults: relative damping and a step search that never ends above plain masking on
  # the calibration data.
  return jaxprune.compensate(ctx.loss_fn, params, masks, ctx.x_calib, ctx.y_calib,
                             steps=ctx.config.cg_steps)


def _magnitude(ctx, params, key):
  del ctx, key
  return jaxprune.scores.magnitude(params)


# --------------------------------------------------------------------------------------------
# Pruning while training.


def per_sparsity(train):
  """``run`` from ``train(ctx, sparsity, key) -> (params, masks)``: one training per sparsity."""
  def run(ctx, sparsities, key):
    return [(*train(ctx, s, jax.random.fold_in(key, i)), {}) for i, s in enumerate(sparsities)]
  run.__doc__ = train.__doc__
  return run


def _cubic(target, end):
  return optax.polynomial_schedule(0.0, target, power=3, transition_steps=end)


def _gradual(ctx, sparsity, key, straight_through):
  """``jaxprune.prune`` last in an ``optax.chain`` over the fine-tuning budget, from the dense
  model: cubic schedule to the target over the first 75% of the steps (mask updates every 1/15
  of it), then training with the final mask."""
  steps = max(ctx.config.finetune, 1)
  end = max(int(0.75 * steps), 1)
  tx = lambda target: optax.chain(  # noqa: E731  (traced target: one compilation)
      ctx.config.optimizer(), jaxprune.prune(sparsity=_cubic(target, end),
                                             every=max(end // 15, 1), end=end,
                                             straight_through=straight_through))
  # straight-through: the forward pass sees the masked weights, the gradient updates them all
  forward = {"forward": jaxprune.transforms.masked_params} if straight_through else {}
  run = ctx.trainer("ste" if straight_through else "gmp", tx, steps, **forward)
  params, state, _ = run(ctx.dense_params, None, key, ctx.x_train, ctx.y_train,
                         hyper=jnp.float32(sparsity))
  masks = jaxprune.masks_of(state)
  return (jaxprune.apply_masks(params, masks) if straight_through else params), masks


def _gmp(ctx, sparsity, key):
  """Gradual magnitude pruning (Zhu & Gupta) of the dense model while fine-tuning."""
  return _gradual(ctx, sparsity, key, straight_through=False)


def _ste(ctx, sparsity, key):
  """Straight-through magnitude pruning of the dense model while fine-tuning (pruned weights
  keep their gradient and can come back); same schedule as GMP."""
  return _gradual(ctx, sparsity, key, straight_through=True)


def _dynamic(wrapper, name):
  def train(ctx, sparsity, key):
    """Sparse training from the initial weights for the whole budget (dense + fine-tuning
    steps), ERK allocation, mask updates every 1/30 of the first 75% of the steps."""
    steps = ctx.config.steps + ctx.config.finetune
    end = max(int(0.75 * steps), 1)
    mask_key, run_key = jax.random.split(key)
    tx = lambda k: wrapper(ctx.config.optimizer(), sparsity, every=max(end // 30, 1),  # noqa
                           end=end, key=k)
    # ERK's allocation is computed in Python from a static sparsity: one compilation per
    # sparsity, the key traced so that later seeds reuse it
    run = ctx.trainer(f"{name}@{sparsity}", tx, steps)
    params, state, _ = run(ctx.init_params, None, run_key, ctx.x_train, ctx.y_train,
                           hyper=mask_key)
    return params, jaxprune.masks_of(state)
  train.__name__ = name
  return train


def _lottery(ctx, sparsities, key):
  """Iterative magnitude pruning with rewinding to the initial weights (Frankle & Carbin):
  one round per target sparsity in increasing order, each pruning the dense-trained (then
  ticket-trained) weights per layer to the target and retraining the rewound ticket for the
  dense budget."""
  run = ctx.trainer("lottery", ctx.config.optimizer(), ctx.config.steps)
  trained, masks, done, out = ctx.dense_params, None, 0.0, []
  for i, s in enumerate(sparsities):
    fraction = (s - done) / (1.0 - done)  # of the remaining weights
    masks, ticket = jaxprune.lottery_round(trained, ctx.init_params, masks, fraction)
    trained = run(ticket, None, jax.random.fold_in(key, i), ctx.x_train, ctx.y_train, masks)[0]
    done = s
    out.append((trained, masks, {}))
  return out


# --------------------------------------------------------------------------------------------
# Regularisation.


def _regularized(make_penalty, name):
  def run(ctx, sparsities, key):
    """Train from the initial weights for the dense budget with the penalty last in the chain,
    record what it zeroed, then per target: global magnitude top-k (the zeros stay pruned
    first) and fine-tuning with the mask kept."""
    penalty = make_penalty(ctx)
    tx = optax.chain(ctx.config.optimizer(), penalty)
    trained = ctx.trainer(name, tx, ctx.config.steps)(
        ctx.init_params, None, jax.random.fold_in(key, 0), ctx.x_train, ctx.y_train)[0]
    kernels = jaxprune.filters.default
    info = {"reached_sparsity": float(jaxprune.summary.sparsity(trained, where=kernels)
                                      ["total"]),
            "channels_zeroed": _zero_channels(ctx.graph, trained)}
    ctx.trainers[f"{name}/trained"] = trained  # for the structured table (zeros cut)
    scores = jaxprune.scores.magnitude(trained)
    out = []
    for i, s in enumerate(sparsities):
      masks = jax.jit(jaxprune.masks.global_topk)(scores, jnp.float32(s))
      pruned = jaxprune.apply_masks(trained, masks)
      out.append((ctx.finetune(pruned, masks, jax.random.fold_in(key, 1 + i)), masks,
                  dict(info)))
    return out
  return run


def _zero_channels(graph, params) -> int:
  keep = jaxprune.regularize.kept_channels(params, graph)
  groups = {g.index: g.size for g in graph.groups if g.prunable}
  return int(sum(groups[g] - len(k) for g, k in keep.items()))


def _l1(ctx):
  return jaxprune.regularize.l1(ctx.config.l1)


def _group_lasso(ctx):
  return jaxprune.regularize.group_lasso(ctx.config.group_lasso, groups=ctx.graph)


# --------------------------------------------------------------------------------------------
# The registry.

_HAN = "Han et al. 2015: LeNet-300-100 12x fewer weights (91.7%) with retraining, no loss"
register(Method("magnitude", "one-shot", "|w|, per layer", _HAN, score=_magnitude))
register(Method("global_magnitude", "one-shot", "|w|, one threshold over all layers", _HAN,
                score=_magnitude, select="global"))
register(Method("random", "one-shot", "uniform random scores, per layer (baseline)",
                "Liu et al. 2022: random pruning falls behind at high sparsity",
                score=lambda ctx, p, k: jaxprune.scores.random(p, k)))
register(Method("saliency", "one-shot", "|w*g| (first-order Taylor, SNIP-like), per layer",
                "Molchanov et al. 2017: Taylor >= magnitude for whole filters",
                score=lambda ctx, p, k: jaxprune.scores.saliency(p, _calib_grads(ctx, p))))
register(Method("obd_fisher", "one-shot", "OBD 1/2*F_ii*w^2, exact Fisher diagonal, per layer",
                "LeCun et al. 1990: OBD beats magnitude at equal count", score=_fisher_obd))
register(Method("taylor2", "one-shot", "|-g*w + 1/2*w*(Hw)| (one HVP), per layer",
                "Molchanov et al. 2019 (second-order Taylor)",
                score=lambda ctx, p, k: jaxprune.scores.taylor2(ctx.loss_fn, p, ctx.x_calib,
                                                                ctx.y_calib)))
register(Method("wanda", "one-shot", "|w|*||x|| per input feature (Wanda), per layer",
                "Sun et al. 2023: Wanda ~ SparseGPT at 50% on LLaMA (LLMs)", score=_wanda))
register(Method("compensate", "one-shot", "|w| per layer, then jaxprune.compensate (CG on GGN)",
                "Hassibi & Stork 1993 (OBS): updating kept weights beats OBD",
                score=_magnitude, after=_compensate))
register(Method("gmp", "training", "gradual magnitude pruning while fine-tuning (prune)",
                "Zhu & Gupta 2017: 90% sparse within ~1 point of dense", run=per_sparsity(_gmp)))
register(Method("ste", "training", "straight-through magnitude pruning while fine-tuning",
                "Zhou et al. 2021 (SR-STE): STE >= GMP at equal steps", run=per_sparsity(_ste)))
register(Method("rigl", "training", "RigL sparse training from scratch (ERK)",
                "Evci et al. 2020: RigL >= SET/static at equal sparsity",
                run=per_sparsity(_dynamic(jaxprune.rigl, "rigl"))))
register(Method("set", "training", "SET sparse training from scratch (ERK)",
                "Mocanu et al. 2018: SET >= static sparse",
                run=per_sparsity(_dynamic(jaxprune.sparse_evolution, "set"))))
register(Method("lottery", "training", "lottery ticket: iterative magnitude, rewind to init",
                "Frankle & Carbin 2019: tickets match dense to ~80-90% (LeNet, Conv-2/4/6)",
                run=_lottery))
register(Method("l1", "regularization", "proximal L1 while training, then a magnitude cut",
                "Han et al. 2015: L1 before retraining, L2 after", run=_regularized(_l1, "l1")))
register(Method("group_lasso", "regularization",
                "proximal group lasso on channels (structure groups), then a magnitude cut",
                "Wen et al. 2016 (SSL): group lasso removes whole filters",
                run=_regularized(_group_lasso, "group_lasso")))
