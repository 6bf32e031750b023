"""Pruning a flax linen model: train, prune one-shot with an ERK allocation, fine-tune sparse.

    python examples/flax_linen.py                 # MLP on MNIST-1D, ~1 minute on a laptop CPU
    python examples/flax_linen.py --model cnn --sparsity 0.8
    python examples/flax_linen.py --quick         # a smoke test

A linen model's ``params`` collection is an ordinary pytree, so the jaxprune steps are:

    scores = jaxprune.scores.magnitude(params)
    masks = jaxprune.masks.topk(scores, jaxprune.allocate.erk(params, 0.9))
    params = jaxprune.apply_masks(params, masks)
    tx = optax.chain(optax.adamw(3e-3), jaxprune.transforms.keep_sparse(masks))  # fine-tune

Kernels (``ndim >= 2``) are pruned; biases are not (jaxprune's default ``where``).
"""

from __future__ import annotations

import argparse

import common
import jax
import optax

import jaxprune
from jaxprune import transforms


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_config_args(parser)
  parser.add_argument("--sparsity", type=float, default=0.9)
  args = parser.parse_args(argv)
  config = common.config_from_args(args)
  if not 0.0 <= args.sparsity < 1.0:
    parser.error(f"--sparsity must be in [0, 1); got {args.sparsity}")

  data = common.load_dataset(config.dataset, num_samples=config.num_samples)
  model = common.make_model(config.model, data, width=config.width)
  loss_fn = common.make_loss(model)
  init_key, train_key, tune_key = jax.random.split(jax.random.key(config.seed), 3)
  params = common.init_params(model, data, init_key)  # {"dense0": {"kernel", "bias"}, ...}

  params = common.train(loss_fn, params, config.optimizer(), data, steps=config.steps,
                        key=train_key, batch_size=config.batch_size)
  dense = common.evaluate(model, params, data.x_test, data.y_test)

  # One-shot: magnitude scores, per-layer sparsities from ERK (larger layers pruned more).
  allocation = jaxprune.allocate.erk(params, args.sparsity)
  masks = jaxprune.masks.topk(jaxprune.scores.magnitude(params), allocation)
  pruned = jaxprune.apply_masks(params, masks)
  one_shot = common.evaluate(model, pruned, data.x_test, data.y_test)

  # Fine-tune with the masks kept: keep_sparse goes last in the chain.
  tx = optax.chain(config.optimizer(), transforms.keep_sparse(masks))
  tuned = common.train(loss_fn, pruned, tx, data, steps=max(config.finetune, 1), key=tune_key,
                       batch_size=config.batch_size)
  final = common.evaluate(model, tuned, data.x_test, data.y_test)
  still_zero = common.pruned_are_zero(tuned, masks)

  size = sum(x.size for x in jax.tree.leaves(params))
  print(f"flax linen {config.model} on {config.dataset}: {size} params, target sparsity "
        f"{args.sparsity:.0%} (ERK over kernels)")
  print(jaxprune.summary.table(tuned))
  print(f"{'':12}{'test acc':>10}{'test loss':>11}")
  for name, (loss, acc) in [("dense", dense), ("one-shot", one_shot), ("fine-tuned", final)]:
    print(f"{name:12}{100 * acc:9.1f}%{loss:11.3f}")
  print(f"pruned weights still exactly 0 after fine-tuning: {still_zero}")
  return {"dense": dense, "one_shot": one_shot, "final": final, "still_zero": still_zero,
          "sparsity": jaxprune.summary.scalars(tuned)}


if __name__ == "__main__":
  main()
