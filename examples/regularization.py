"""Sparsity by regularisation (proximal L1, group lasso) against GMP and RigL, at matched sparsity.

    python examples/regularization.py                 # MNIST-1D MLP, target 90% of the kernels
    python examples/regularization.py --sparsity 0.8 --l1 1e-3 --group 3e-2
    python examples/regularization.py --quick         # a smoke test

A penalty does not set the sparsity: L1 (``jaxprune.regularize.l1``, soft-thresholding after
every AdamW step) and group lasso on hidden neurons (``jaxprune.regularize.group_lasso(groups=-1)``
on the hidden kernels: a neuron's incoming weights are one group) reach whatever sparsity their
strength gives. So each strength is reported at the sparsity it reached, and then cut to the
target with a global magnitude top-k (the zeros it found stay pruned) and fine-tuned with the
mask kept (``regularize.masks_from_zeros`` + ``keep_sparse`` semantics), for the same total
number of steps as gradual magnitude pruning (``jaxprune.prune`` with
``jaxprune.schedules.polynomial``) and RigL (``jaxprune.rigl``) at the target.
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import jax.numpy as jnp
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
                      help="group-lasso thresholds per step (default 3e-3,1e-2)")
  args = parser.parse_args(argv)
  if not 0.0 < args.sparsity < 1.0:
    parser.error(f"--sparsity must be in (0, 1); got {args.sparsity}")
  config = common.config_from_args(args)
  l1s = args.l1 or ([1e-3] if args.quick else [3e-4, 1e-3])
  groups = args.group or ([1e-2] if args.quick else [3e-3, 1e-2])
  start = time.time()

  data = common.load_dataset(config.dataset, num_samples=config.num_samples)
  model = common.make_model(config.model, data, width=config.width)
  loss_fn = common.make_loss(model)
  params0 = common.init_params(model, data, jax.random.key(config.seed))
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  total = config.steps + config.finetune
  target = args.sparsity
  kernels = jaxprune.filters.default
  hidden = r"dense\d+/kernel"  # a hidden neuron = one column of its layer's kernel
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

  rows = []
  dense = run(config.optimizer(), total, params0)
  rows.append(("dense", "", 0.0, acc_of(dense), sparsity_of(dense), acc_of(dense), ""))
  for name, factory, strengths in [
      ("L1", lambda s: jaxprune.regularize.l1(s), l1s),
      ("group lasso (neurons)",
       lambda s: jaxprune.regularize.group_lasso(s, groups=-1, where=hidden), groups)]:
    for s in strengths:
      trained = run(optax.chain(config.optimizer(), factory(s)), config.steps, params0, k=1)
      zero_neurons = sum(len(v) for v in jaxprune.regularize.zero_groups(
          trained, -1, where=hidden).values())
      reached, acc_reached = sparsity_of(trained), acc_of(trained)
      final = cut_and_finetune(trained) if reached < target else trained
      rows.append((name, f"{s:g}", reached, acc_reached, sparsity_of(final), acc_of(final),
                   f"{zero_neurons} neurons zeroed"))
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
  print(f"took {time.time() - start:.0f} s")
  return {"rows": rows}


if __name__ == "__main__":
  main()
