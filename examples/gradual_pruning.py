"""Gradual magnitude pruning (Zhu & Gupta, 2017) of a flax MLP on MNIST-1D, to 90% sparsity.

Trains the same MLP twice with the same data order: dense, and with
``optax.chain(optax.adamw(...), jaxprune.prune(...))`` following a cubic sparsity schedule.
Prints both test accuracies and the per-layer sparsity table of the pruned model; records the
sparsity and test accuracy over training, and can write them to TensorBoard and to a plot:

    python examples/gradual_pruning.py              # about a minute on a laptop CPU
    python examples/gradual_pruning.py --logdir runs/gmp --plot gmp.png
    tensorboard --logdir runs                        # (pip install "jaxprune[tensorboard]")
    python examples/gradual_pruning.py --quick      # smoke test: a few seconds
"""

from __future__ import annotations

import argparse
import time

import common  # first: it puts the repository on sys.path when jaxprune is not installed
import jax
import jax.numpy as jnp
import optax

import jaxprune
from jaxprune import schedules


def train_logged(loss_fn, evaluate, params, tx, data, *, steps, chunk, batch_size, key,
                 writer=None, name=""):
  """Trains in chunks of ``chunk`` steps (one compiled scan); after each chunk records the
  kernels' sparsity and the test accuracy (and writes them when ``writer`` is given)."""
  run = common.make_trainer(loss_fn, tx, batch_size=batch_size, steps=chunk)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  state, history = tx.init(params), []
  for i in range(steps // chunk):
    params, state, _ = run(params, state, jax.random.fold_in(key, i), x, y)
    _, acc = evaluate(params, x_test, y_test)
    step = (i + 1) * chunk
    sparsity = float(jaxprune.summary.sparsity(params)["total"])
    history.append((step, sparsity, float(acc)))
    if writer is not None:
      jaxprune.summary.log(writer, step, params if name == "pruned" else None,
                           {f"{name}/test_accuracy": float(acc)}, prefix=f"{name}/sparsity/")
  return params, state, history


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=None, help="training steps per run "
                      "(default 6000; --quick: 200)")
  parser.add_argument("--seed", type=int, default=0, help="initialisation and data order")
  parser.add_argument("--sparsity", type=float, default=0.9, help="final sparsity")
  parser.add_argument("--hidden", type=int, default=None, help="width of the hidden layers "
                      "(default 512)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--samples", type=int, default=None,
                      help="MNIST-1D samples (80%% train; default 10000)")
  parser.add_argument("--logdir", default=None, help="write TensorBoard scalars here")
  parser.add_argument("--plot", default=None, help="save a sparsity/accuracy-over-steps plot")
  parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
  args = parser.parse_args(argv)
  for name, full, quick in (("steps", 6000, 200), ("hidden", 512, 64), ("samples", 10000, 1000)):
    if getattr(args, name) is None:
      setattr(args, name, quick if args.quick else full)
  if not 0.0 < args.sparsity < 1.0:
    parser.error(f"--sparsity must be in (0, 1); got {args.sparsity}")
  chunk = max(args.steps // 20, 1)
  if args.steps < 20 or args.steps % chunk:
    parser.error(f"--steps must be >= 20 and a multiple of {chunk}; got {args.steps}")

  started = time.perf_counter()
  data = common.load_dataset("mnist1d", num_samples=args.samples)
  model = common.MLP(data.num_classes, (args.hidden, args.hidden))
  loss_fn, evaluate = common.make_loss(model), common.make_evaluate(model)
  init_key, data_key = jax.random.split(jax.random.key(args.seed))
  params = common.init_params(model, data, init_key)
  # Sparsity ramps up from 10% to 60% of training (cubic), then the sparse model fine-tunes.
  begin, end = args.steps // 10, (6 * args.steps) // 10
  every = max(1, (end - begin) // 50)
  schedule = schedules.polynomial(args.sparsity, begin, end)
  optimizer = lambda: optax.adamw(optax.cosine_decay_schedule(args.lr, args.steps),
                                  weight_decay=1e-4)
  writer = None if args.logdir is None else jaxprune.summary.tensorboard(args.logdir)
  settings = dict(steps=args.steps, chunk=chunk, batch_size=args.batch, key=data_key,
                  writer=writer)
  dense, _, dense_history = train_logged(loss_fn, evaluate, params, optimizer(), data,
                                         name="dense", **settings)
  tx = optax.chain(optimizer(), jaxprune.prune(sparsity=schedule, every=every, begin=begin,
                                               end=end))
  pruned, state, history = train_logged(loss_fn, evaluate, params, tx, data, name="pruned",
                                        **settings)
  if writer is not None:
    writer.close()
  if args.plot:
    steps, sparsity, acc = zip(*history)
    jaxprune.summary.plot_training(
        steps, sparsity, {"pruned test accuracy": acc,
                          "dense test accuracy": [a for _, _, a in dense_history]},
        path=args.plot, title=f"Gradual magnitude pruning to {args.sparsity:.0%}")

  dense_acc, pruned_acc = dense_history[-1][2], history[-1][2]
  print(jaxprune.summary.table(pruned))
  print(f"masks: {float(jaxprune.summary.sparsity(jaxprune.masks_of(state))['total']):.2%} "
        "pruned")
  print("step  sparsity  test acc (pruned)  test acc (dense)")
  for (step, sparsity, acc), (_, _, dense_acc_at) in list(zip(history, dense_history))[::4]:
    print(f"{step:>4}  {sparsity:>8.1%}  {100 * acc:>16.2f}%  {100 * dense_acc_at:>15.2f}%")
  print(f"dense  test accuracy: {100 * dense_acc:.2f}%")
  print(f"pruned test accuracy: {100 * pruned_acc:.2f}%  ({args.sparsity:.0%} sparsity, "
        f"difference {100 * (pruned_acc - dense_acc):+.2f} points)")
  print(f"time: {time.perf_counter() - started:.1f} s")
  return dense_acc, pruned_acc


if __name__ == "__main__":
  main()
