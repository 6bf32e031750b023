"""Pruning a flax nnx Module: prune its ``nnx.Param`` state, write it back, fine-tune sparse.

    python examples/flax_nnx.py                   # MLP on MNIST-1D
    python examples/flax_nnx.py --quick           # a smoke test

The jaxprune steps on an ``nnx.Module``:

    params = nnx.state(model, nnx.Param)                   # an nnx.State: any pytree works
    masks = jaxprune.masks.global_topk(jaxprune.scores.magnitude(params), 0.9)
    nnx.update(model, jaxprune.apply_masks(params, masks))  # the model is now sparse
    optimizer = nnx.Optimizer(model, optax.chain(optax.adamw(3e-3),
                                                 jaxprune.transforms.keep_sparse(masks)),
                              wrt=nnx.Param)                # fine-tuning keeps the zeros

Paths are the State's keys (``layers/0/kernel``; nnx's trailing ``value`` is dropped).

Pruning *during* training with ``prune`` inside ``nnx.Optimizer`` (the last part of this
script): ``nnx.Optimizer.update(model, grads, **kwargs)`` forwards ``kwargs`` to
``tx.update`` (unwrapped to arrays), so score inputs go there. ``grads=`` would collide with
its own ``grads`` argument (a ``TypeError``): give the gradients under another name::

    score = lambda params, *, gradients: jaxprune.scores.saliency(params, gradients)
    optimizer = nnx.Optimizer(model, optax.chain(optax.adamw(3e-3),
                                                 jaxprune.prune(score, sparsity=schedule)),
                              wrt=nnx.Param)
    optimizer.update(model, grads, gradients=grads)        # in the jitted step
    masks = jaxprune.masks_of(optimizer.opt_state)          # nnx OptVariable leaves: accepted
    jaxprune.apply_masks(nnx.state(model, nnx.Param), masks)  # by apply_masks, topk(previous=),
    jaxprune.export.compress(nnx.state(model, nnx.Param), masks)  # export.compress / save
"""

from __future__ import annotations

import argparse

import common
import jax
import optax
from flax import nnx

import jaxprune
from jaxprune import transforms


class MLP(nnx.Module):
  """A ReLU MLP written with nnx."""

  def __init__(self, features: int, width: int, num_classes: int, *, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(features, width, rngs=rngs),
                            nnx.Linear(width, width, rngs=rngs)])
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return self.head(x)


def cross_entropy(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def accuracy(model, x, y):
  logits = model(x)
  return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
          (logits.argmax(-1) == y).mean())


def train_dense(model, config, data, key):
  """Dense training, functional style: split the module, run the scanned trainer, update it."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss_fn = lambda p, x, y: cross_entropy(nnx.merge(graphdef, p, rest), x, y)
  trained = common.train(loss_fn, params, config.optimizer(), data, steps=config.steps,
                         key=key, batch_size=config.batch_size)
  nnx.update(model, trained)


@nnx.jit
def finetune_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
  optimizer.update(model, grads)
  return loss


def saliency_score(params, *, gradients):
  """|w·g| with the gradients under a name that ``nnx.Optimizer.update`` does not use itself."""
  return jaxprune.scores.saliency(params, gradients)


@nnx.jit
def prune_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
  optimizer.update(model, grads, gradients=grads)  # kwargs reach prune's score
  return loss


def train_while_pruning(model, config, data, sparsity, key):
  """``config.finetune`` steps from dense to ``sparsity``: ``prune`` (saliency) in nnx.Optimizer."""
  steps = max(config.finetune, 2)
  schedule = jaxprune.schedules.polynomial(sparsity, begin=0, end=steps // 2)
  tx = optax.chain(config.optimizer(),
                   transforms.prune(saliency_score, sparsity=schedule, every=max(steps // 10, 1)))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  order = jax.random.randint(key, (steps, config.batch_size), 0, len(data.x_train))
  for index in order:
    prune_step(model, optimizer, data.x_train[index], data.y_train[index])
  return jaxprune.masks_of(optimizer.opt_state)


def evaluate(model, data):
  loss, acc = accuracy(model, data.x_test, data.y_test)
  return float(loss), float(acc)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_config_args(parser, models=("mlp",))
  parser.add_argument("--sparsity", type=float, default=0.9)
  args = parser.parse_args(argv)
  config = common.config_from_args(args)
  if not 0.0 <= args.sparsity < 1.0:
    parser.error(f"--sparsity must be in [0, 1); got {args.sparsity}")

  data = common.load_dataset(config.dataset, num_samples=config.num_samples)
  model = MLP(data.x_train.shape[1], config.width, data.num_classes,
              rngs=nnx.Rngs(config.seed))
  train_key, tune_key = jax.random.split(jax.random.key(config.seed))
  train_dense(model, config, data, train_key)
  dense = evaluate(model, data)

  # Prune the module's Param state and write it back into the module.
  params = nnx.state(model, nnx.Param)
  masks = jaxprune.masks.global_topk(jaxprune.scores.magnitude(params), args.sparsity)
  nnx.update(model, jaxprune.apply_masks(params, masks))
  one_shot = evaluate(model, data)

  # Fine-tune the module in place with nnx.Optimizer; keep_sparse keeps pruned weights at 0.
  optimizer = nnx.Optimizer(model, optax.chain(config.optimizer(), transforms.keep_sparse(masks)),
                            wrt=nnx.Param)
  order = jax.random.randint(tune_key, (max(config.finetune, 1), config.batch_size), 0,
                             len(data.x_train))
  for index in order:
    finetune_step(model, optimizer, data.x_train[index], data.y_train[index])
  final = evaluate(model, data)
  tuned = nnx.state(model, nnx.Param)
  still_zero = common.pruned_are_zero(tuned, masks)

  # Prune during training instead: a fresh module, prune inside nnx.Optimizer, score inputs
  # given through optimizer.update; the masks it holds feed apply_masks and export directly.
  gradual_model = MLP(data.x_train.shape[1], config.width, data.num_classes,
                      rngs=nnx.Rngs(config.seed))
  gradual_masks = train_while_pruning(gradual_model, config, data, args.sparsity, train_key)
  gradual_params = nnx.state(gradual_model, nnx.Param)
  nnx.update(gradual_model, jaxprune.apply_masks(gradual_params, gradual_masks))  # a no-op
  gradual = evaluate(gradual_model, data)
  gradual_sparsity = jaxprune.summary.scalars(gradual_params)
  packed = jaxprune.export.nbytes(jaxprune.export.compress(gradual_params, gradual_masks))
  dense_bytes = sum(x.nbytes for x in jax.tree.leaves(gradual_params))

  print(f"flax nnx MLP on {config.dataset}: global magnitude pruning to {args.sparsity:.0%}")
  print(jaxprune.summary.table(tuned))
  print(f"{'':12}{'test acc':>10}{'test loss':>11}")
  for name, (loss, acc) in [("dense", dense), ("one-shot", one_shot), ("fine-tuned", final)]:
    print(f"{name:12}{100 * acc:9.1f}%{loss:11.3f}")
  print(f"prune in nnx.Optimizer (saliency, {max(config.finetune, 2)} steps): test acc "
        f"{100 * gradual[1]:.1f}%, loss {gradual[0]:.3f}, sparsity "
        f"{gradual_sparsity['sparsity/total']:.1%}, export.compress {packed} of {dense_bytes} B")
  print(f"pruned weights still exactly 0 after {len(order)} nnx.Optimizer steps: {still_zero}")
  return {"dense": dense, "one_shot": one_shot, "final": final, "still_zero": still_zero,
          "sparsity": jaxprune.summary.scalars(tuned), "gradual": gradual,
          "gradual_sparsity": gradual_sparsity}


if __name__ == "__main__":
  main()
