"""Pruning an equinox model: filter its arrays, prune them, combine them back, fine-tune sparse.

    python examples/equinox_example.py            # eqx.nn.MLP on MNIST-1D
    python examples/equinox_example.py --quick    # a smoke test

An equinox model is a pytree; its arrays are the params:

    params, static = eqx.partition(model, eqx.is_array)   # params = eqx.filter(model, eqx.is_array)
    masks = jaxprune.masks.topk(jaxprune.scores.magnitude(params),
                                jaxprune.allocate.uniform(params, 0.9))
    model = eqx.combine(jaxprune.apply_masks(params, masks), static)

Weights (``layers/0/weight``, ``ndim >= 2``) are pruned; biases are not.
"""

from __future__ import annotations

import argparse

import common
import equinox as eqx
import jax
import optax

import jaxprune
from jaxprune import transforms


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_config_args(parser, models=("mlp",))
  parser.add_argument("--sparsity", type=float, default=0.9)
  args = parser.parse_args(argv)
  config = common.config_from_args(args)
  if not 0.0 <= args.sparsity < 1.0:
    parser.error(f"--sparsity must be in [0, 1); got {args.sparsity}")

  data = common.load_dataset(config.dataset, num_samples=config.num_samples)
  model_key, train_key, tune_key = jax.random.split(jax.random.key(config.seed), 3)
  model = eqx.nn.MLP(data.x_train.shape[1], data.num_classes, config.width, depth=2,
                     key=model_key)
  params, static = eqx.partition(model, eqx.is_array)

  def loss_fn(params, x, y):
    logits = jax.vmap(eqx.combine(params, static))(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def evaluate(params):
    logits = jax.vmap(eqx.combine(params, static))(data.x_test)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, data.y_test).mean()
    return loss, (logits.argmax(-1) == data.y_test).mean()

  def measure(params):
    loss, acc = evaluate(params)
    return float(loss), float(acc)

  params = common.train(loss_fn, params, config.optimizer(), data, steps=config.steps,
                        key=train_key, batch_size=config.batch_size)
  dense = measure(params)

  # The same sparsity in every weight matrix; biases untouched.
  masks = jaxprune.masks.topk(jaxprune.scores.magnitude(params),
                              jaxprune.allocate.uniform(params, args.sparsity))
  pruned = jaxprune.apply_masks(params, masks)
  one_shot = measure(pruned)

  tx = optax.chain(config.optimizer(), transforms.keep_sparse(masks))
  tuned = common.train(loss_fn, pruned, tx, data, steps=max(config.finetune, 1), key=tune_key,
                       batch_size=config.batch_size)
  final = measure(tuned)
  model = eqx.combine(tuned, static)  # a sparse eqx.nn.MLP, ready to use
  still_zero = common.pruned_are_zero(tuned, masks)
  first = model.layers[0].weight

  print(f"equinox MLP on {config.dataset}: {args.sparsity:.0%} of every weight matrix pruned")
  print(jaxprune.summary.table(tuned))
  print(f"{'':12}{'test acc':>10}{'test loss':>11}")
  for name, (loss, acc) in [("dense", dense), ("one-shot", one_shot), ("fine-tuned", final)]:
    print(f"{name:12}{100 * acc:9.1f}%{loss:11.3f}")
  print(f"model.layers[0].weight: {first.shape}, {int((first == 0).sum())} zeros; pruned weights "
        f"still exactly 0 after fine-tuning: {still_zero}")
  return {"dense": dense, "one_shot": one_shot, "final": final, "still_zero": still_zero,
          "sparsity": jaxprune.summary.scalars(tuned)}


if __name__ == "__main__":
  main()
