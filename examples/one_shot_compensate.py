"""One-shot pruning followed by second-order compensation (the Optimal Brain Surgeon idea).

    python examples/one_shot_compensate.py                     # digits MLP, 80% sparsity
    python examples/one_shot_compensate.py --dataset mnist1d --sparsity 0.7
    python examples/one_shot_compensate.py --quick             # a smoke test

Train a dense model, prune it one-shot by magnitude, then let ``jaxprune.compensate`` move the
kept weights to minimise the local quadratic model of the loss with the pruned weights held at
0 (conjugate gradients on masked Gauss-Newton-vector products; no Hessian is materialised):

    model = jaxprune.scores.ModelLoss(apply_fn, cross_entropy)      # model(params, x, y) = loss
    masks = jaxprune.masks.topk(jaxprune.scores.magnitude(params), 0.8)
    params = jaxprune.compensate(model, params, masks, x_calib, y_calib, steps=50, damping=1e-4)

No fine-tuning is involved: the gain comes from the curvature-aware update alone.
"""

from __future__ import annotations

import argparse

import common
import jax
import jax.numpy as jnp

import jaxprune


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_config_args(parser, common.Config(dataset="digits", steps=3000))
  parser.add_argument("--sparsity", type=float, default=0.8)
  parser.add_argument("--cg-steps", type=int, default=50)
  parser.add_argument("--damping", type=float, default=1e-4,
                      help="damping, relative to the mean curvature diagonal of the kept weights")
  parser.add_argument("--calib", type=int, default=1024, help="calibration examples (train set)")
  args = parser.parse_args(argv)
  if not 0.0 <= args.sparsity < 1.0:
    parser.error(f"--sparsity must be in [0, 1); got {args.sparsity}")
  config = common.config_from_args(args)

  data = common.load_dataset(config.dataset, num_samples=config.num_samples)
  model = common.make_model(config.model, data, width=config.width)
  loss_fn = common.make_loss(model)  # a jaxprune.scores.ModelLoss: GGN products available
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  params = common.init_params(model, data, init_key)
  params = common.train(loss_fn, params, config.optimizer(), data, steps=config.steps,
                        key=train_key, batch_size=config.batch_size)

  masks = jaxprune.masks.topk(jaxprune.scores.magnitude(params), args.sparsity)
  pruned = jaxprune.apply_masks(params, masks)
  x_calib = jnp.asarray(data.x_train[:args.calib])
  y_calib = jnp.asarray(data.y_train[:args.calib])
  compensated = jax.jit(lambda p, m, x, y: jaxprune.compensate(
      loss_fn, p, m, x, y, steps=args.cg_steps, damping=args.damping))(params, masks, x_calib,
                                                                        y_calib)

  rows = {name: common.evaluate(model, p, data.x_test, data.y_test)
          for name, p in [("dense", params), ("magnitude", pruned),
                          ("magnitude + compensate", compensated)]}
  print(f"{config.model} on {config.dataset}, one-shot magnitude pruning to {args.sparsity:.0%}, "
        f"compensate: {args.cg_steps} CG steps on GGN products, damping {args.damping:g}, "
        f"{len(x_calib)} calibration examples")
  print(jaxprune.summary.table(compensated))
  print(f"{'':24}{'test acc':>10}{'test loss':>11}")
  for name, (loss, acc) in rows.items():
    print(f"{name:24}{100 * acc:9.1f}%{loss:11.3f}")
  still_zero = common.pruned_are_zero(compensated, masks)
  print(f"pruned weights exactly 0 after compensation: {still_zero}")
  return {**rows, "still_zero": still_zero}


if __name__ == "__main__":
  main()
