"""Sparsity by regularisation (proximal L1, group lasso) against GMP and RigL, at matched sparsity.

    python examples/regularization.py                 # MNIST-1D MLP, target 90% of the kernels
    python examples/regularization.py --sparsity 0.8 --l1 1e-3 --group 3e-2
    python examples/regularization.py --quick         # a smoke test

A penalty does not set the sparsity: L1 (``jaxprune.regularize.l1``, soft-thresholding after
every AdamW step) and group lasso on hidden neurons (``jaxprune.regularize.group_lasso`` with the
groups of ``jaxprune.structure.trace``: a neuron's kernel column, bias and outgoing row are one
group) reach whatever sparsity their
strength gives. So each strength is reported at the sparsity it reached, and then cut to the
target with a global magnitude top-k (the zeros it found stay pruned) and fine-tuned with the
mask kept (``regularize.masks_from_zeros`` + ``keep_sparse`` semantics), for the same total
number of steps as gradual magnitude pruning (``jaxprune.prune`` with
``jaxprune.schedules.polynomial``) and RigL (``jaxprune.rigl``) at the target.

A second table takes the group-lasso runs to a physically smaller model: the zeroed neurons are
cut out of the arrays (``regularize.kept_channels`` + ``jaxprune.structure.prune(keep=...)``) and
compared with ``structure``'s score-based removal of the same number of neurons per layer from
the dense model (largest L2 norm kept), both fine-tuned for the same steps; FLOPs per example
from XLA's cost analysis of the small model's forward pass.
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune


def _floats(text):
  return [float(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_config_args(parser, common.Config(), models=("mlp",))
  parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity (kernels)")
  parser.add_argument("--l1", type=_floats, default=None,
                      help="L1 thresholds per step (default 3e-4,1e-3)")
  parser.add_argument("--group", type=_floats, default=None,
                      help="group-lasso thresholds per step (default 1e-3,3e-3)")
  args = parser.parse_args(argv)
  if not 0.0 < args.sparsity < 1.0:
    parser.error(f"--sparsity must be in (0, 1); got {args.sparsity}")
  config = common.config_from_args(args)
  l1s = args.l1 or ([1e-3] if args.quick else [3e-4, 1e-3])
  groups = args.group or ([1e-2] if args.quick else [1e-3, 3e-3])
  start = time.time()

  data = common.load_dataset(config.dataset, num_samples=config.num_samples)
  model = common.make_model(config.model, data, width=config.width)
  loss_fn = common.make_loss(model)
  params0 = common.init_params(model, data, jax.random.key(config.seed))
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  total = config.steps + config.finetune
  target = args.sparsity
  kernels = jaxprune.filters.default
  apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  # A hidden neuron's group: its kernel column, its bias and the next layer's kernel row, so a
  # zeroed group is a neuron that structure.prune can cut out of the arrays.
  graph = jaxprune.structure.trace(apply_fn, params0, x[:1])
  sparsity_of = lambda p: float(jaxprune.summary.sparsity(p, where=kernels)["total"])  # noqa
  acc_of = lambda p: 100 * common.evaluate(model, p, data.x_test, data.y_test)[1]  # noqa
  key = jax.random.key(config.seed + 1)

  def run(tx, steps, params, masks=None, k=0):
    trainer = common.make_trainer(loss_fn, tx, batch_size=config.batch_size, steps=steps)
    return trainer(params, None, jax.random.fold_in(key, k), x, y, masks)[0]

  def cut_and_finetune(params):
    zeros = jaxprune.regularize.masks_from_zeros(params, where=kernels)
    scores = jaxprune.scores.magnitude(params)
    masks = jaxprune.masks.global_topk(scores, target, where=kernels, previous=zeros)
    masks = jax.tree.map(lambda a, b: a & b, masks, zeros)  # cut to the target, zeros stay 0
    if not config.finetune:
      return jaxprune.apply_masks(params, masks)
    return run(config.optimizer(), config.finetune, jaxprune.apply_masks(params, masks), masks,
               k=2)

  rows, group_runs = [], []
  dense = run(config.optimizer(), total, params0)
  rows.append(("dense", "", 0.0, acc_of(dense), sparsity_of(dense), acc_of(dense), ""))
  for name, factory, strengths in [
      ("L1", lambda s: jaxprune.regularize.l1(s), l1s),
      ("group lasso (neurons)",
       lambda s: jaxprune.regularize.group_lasso(s, groups=graph), groups)]:
    for s in strengths:
      trained = run(optax.chain(config.optimizer(), factory(s)), config.steps, params0, k=1)
      zero_neurons = _neurons(graph) - sum(
          len(v) for v in jaxprune.regularize.kept_channels(trained, graph).values())
      reached, acc_reached = sparsity_of(trained), acc_of(trained)
      final = cut_and_finetune(trained) if reached < target else trained
      rows.append((name, f"{s:g}", reached, acc_reached, sparsity_of(final), acc_of(final),
                   f"{zero_neurons} neurons zeroed"))
      if name.startswith("group"):
        group_runs.append((s, trained))
  schedule = jaxprune.schedules.polynomial(target, begin=config.steps // 5, end=config.steps)
  gmp = run(optax.chain(config.optimizer(), jaxprune.prune(
      sparsity=schedule, every=max(config.steps // 30, 1), begin=config.steps // 5,
      end=config.steps)), total, params0)
  rows.append(("GMP (prune, polynomial)", "", sparsity_of(gmp), acc_of(gmp), sparsity_of(gmp),
               acc_of(gmp), ""))
  rigl = run(jaxprune.rigl(config.optimizer(), target, every=100, end=int(0.75 * total),
                           allocate="uniform", key=config.seed), total, params0)
  rows.append(("RigL (uniform)", "", sparsity_of(rigl), acc_of(rigl), sparsity_of(rigl),
               acc_of(rigl), ""))

  print(f"{config.model} {config.width}x{config.width} on {config.dataset}: {config.steps} "
        f"training steps (+{config.finetune} fine-tuning with the mask kept for the "
        f"regularised runs; GMP and RigL train {total} steps), target sparsity {target:.0%} "
        "of the kernels")
  print(f"{'method':26}{'strength':>9}{'reached':>9}{'acc':>7}{'final sp.':>10}{'final acc':>10}")
  for name, s, reached, acc, sp, final_acc, note in rows:
    print(f"{name:26}{s:>9}{100 * reached:8.1f}%{acc:6.1f}%{100 * sp:9.1f}%{final_acc:9.1f}%"
          f"  {note}")
  structured = _structured(graph, apply_fn, dense, group_runs, x, y, data, config)
  print(f"\nphysically removed neurons (fine-tuned {config.finetune} steps), FLOPs per example:")
  print(f"{'removal':34}{'neurons kept':>13}{'FLOPs':>12}{'fewer':>9}{'test acc':>9}")
  for name, kept, flops, fewer, acc in structured:
    print(f"{name:34}{kept:>13}{flops:12.0f}{fewer:8.2f}x{acc:8.1f}%")
  print(f"took {time.time() - start:.0f} s")
  return {"rows": rows, "structured": structured}


def _flops(apply_fn, params, x) -> float:
  return common.flops(apply_fn, params, x[:1])  # per example


def _structured(graph, apply_fn, dense, group_runs, x, y, data, config) -> list:
  """Group lasso's zero neurons cut out vs score-based removal of as many, both fine-tuned."""
  dense_flops = _flops(apply_fn, dense, x)
  test_x, test_y = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  dense_acc = 100 * float(jnp.mean(jnp.argmax(apply_fn(dense, test_x), -1) == test_y))
  rows = [("dense", str(_neurons(graph)), dense_flops, 1.0, dense_acc)]

  def finetune(small, small_apply, k):
    def loss(p, xb, yb):
      logits = small_apply(p, xb)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], 1))
    tuned = small
    if config.finetune:
      trainer = common.make_trainer(loss, config.optimizer(), batch_size=config.batch_size,
                                    steps=config.finetune)
      tuned = trainer(small, None, jax.random.key(config.seed + k), x, y)[0]
    return 100 * float(jnp.mean(jnp.argmax(small_apply(tuned, test_x), -1) == test_y))

  for i, (strength, trained) in enumerate(group_runs):
    keep = jaxprune.regularize.kept_channels(trained, graph)
    counts = {g: len(v) for g, v in keep.items()}
    scores = jaxprune.structure.group_scores(graph, dense, "l2", groups=list(keep))
    by_norm = {g: sorted(int(j) for j in np.argsort(-np.asarray(scores[g]))[:counts[g]])
               for g in keep}
    for name, params, kept in [(f"group lasso {strength:g}, zeros cut", trained, keep),
                               ("L2-norm removal, same counts", dense, by_norm)]:
      small, small_apply = jaxprune.structure.prune(graph, params, keep=kept)
      flops = _flops(small_apply, small, x)
      rows.append((name, str(sum(counts.values())), flops, dense_flops / flops,
                   finetune(small, small_apply, 10 + i)))
  return rows


def _neurons(graph) -> int:
  return sum(g.size for g in graph.groups if g.prunable)


if __name__ == "__main__":
  main()
