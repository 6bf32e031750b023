"""Gradual magnitude pruning (Zhu & Gupta, 2017) of a flax MLP on MNIST-1D, to 90% sparsity.

Trains the same MLP twice with the same data order: dense, and with
``optax.chain(optax.adamw(...), jaxprune.transforms.prune(...))`` following a cubic sparsity
schedule. Prints both test accuracies and the per-layer sparsity table of the pruned model.

    python examples/gradual_pruning.py              # about a minute on a laptop CPU
    python examples/gradual_pruning.py --quick      # smoke test: a few seconds
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import jaxprune
from jaxprune import schedules
from jaxprune.transforms import masks_of, prune


class MLP(nn.Module):
  """A plain ReLU MLP classifier."""

  hidden: int = 512
  layers: int = 2
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    for _ in range(self.layers):
      x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.classes)(x)


def load_mnist1d(samples: int, seed: int):
  """MNIST-1D (Greydanus, 2020), generated offline: standardised (x, y, x_test, y_test)."""
  from mnist1d.data import get_dataset_args, make_dataset
  args = get_dataset_args()
  args.num_samples = samples
  args.seed = seed
  data = make_dataset(args)
  x, x_test = np.asarray(data["x"], np.float32), np.asarray(data["x_test"], np.float32)
  mean, std = x.mean(), x.std()
  return ((x - mean) / std, np.asarray(data["y"], np.int32), (x_test - mean) / std,
          np.asarray(data["y_test"], np.int32))


def batches(n: int, batch: int, steps: int, seed: int) -> np.ndarray:
  """Indices of the minibatches (epochs of shuffled samples), shape ``(steps, batch)``."""
  rng = np.random.default_rng(seed)
  per_epoch = n // batch
  epochs = -(-steps // per_epoch)
  order = np.concatenate([rng.permutation(n)[:per_epoch * batch] for _ in range(epochs)])
  return order[:steps * batch].reshape(steps, batch)


def train(model, params, tx, x, y, index, chunk: int = 250):
  """Trains with ``tx`` over the minibatches ``index``; lax.scan over chunks of steps."""

  def loss_fn(params, xb, yb):
    logits = model.apply({"params": params}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry, idx):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return (params_after(params, updates), state), loss

  def params_after(params, updates):
    return optax.apply_updates(params, updates)

  run = jax.jit(lambda carry, idx: jax.lax.scan(step, carry, idx))
  carry = (params, tx.init(params))
  for start in range(0, len(index), chunk):
    carry, _ = run(carry, index[start:start + chunk])
  return carry


def accuracy(model, params, x, y) -> float:
  logits = jax.jit(model.apply)({"params": params}, x)
  return float(jnp.mean(jnp.argmax(logits, -1) == y))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=6000, help="training steps per run")
  parser.add_argument("--seed", type=int, default=0, help="initialisation and data order")
  parser.add_argument("--sparsity", type=float, default=0.9, help="final sparsity")
  parser.add_argument("--hidden", type=int, default=512, help="width of the hidden layers")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--samples", type=int, default=10000, help="MNIST-1D samples (80%% train)")
  parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.hidden, args.samples = min(args.steps, 200), 64, 1000

  started = time.perf_counter()
  x, y, x_test, y_test = map(jnp.asarray, load_mnist1d(args.samples, seed=args.seed))
  model = MLP(hidden=args.hidden)
  params = model.init(jax.random.key(args.seed), x[:1])["params"]
  index = jnp.asarray(batches(len(x), args.batch, args.steps, args.seed))
  # Sparsity ramps up from 10% to 60% of training (cubic), then the sparse model fine-tunes.
  begin, end = args.steps // 10, (6 * args.steps) // 10
  every = max(1, (end - begin) // 50)
  schedule = schedules.polynomial(args.sparsity, begin, end)
  optimizer = lambda: optax.adamw(optax.cosine_decay_schedule(args.lr, args.steps),
                                  weight_decay=1e-4)

  dense, _ = train(model, params, optimizer(), x, y, index)
  tx = optax.chain(optimizer(), prune(sparsity=schedule, every=every, begin=begin, end=end))
  pruned, state = train(model, params, tx, x, y, index)

  dense_acc = accuracy(model, dense, x_test, y_test)
  pruned_acc = accuracy(model, pruned, x_test, y_test)
  print(jaxprune.summary.table(pruned))
  print(f"masks: {float(jaxprune.summary.sparsity(masks_of(state))['total']):.2%} pruned")
  print(f"dense  test accuracy: {100 * dense_acc:.2f}%")
  print(f"pruned test accuracy: {100 * pruned_acc:.2f}%  ({args.sparsity:.0%} sparsity, "
        f"difference {100 * (pruned_acc - dense_acc):+.2f} points)")
  print(f"time: {time.perf_counter() - started:.1f} s")
  return dense_acc, pruned_acc


if __name__ == "__main__":
  main()
