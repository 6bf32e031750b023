"""Lottery tickets on MNIST-1D: iterative magnitude pruning with weight rewinding.

    python examples/lottery_ticket.py                  # 10 rounds of 20%: ~89% sparse
    python examples/lottery_ticket.py --rewind-step 100 --fraction 0.3
    python examples/lottery_ticket.py --quick          # a smoke test

Each round trains the sparse network, prunes ``--fraction`` of the remaining weights of every
kernel by magnitude, and rewinds the kept weights to their initial values (or to their values
at step ``--rewind-step``, "late rewinding"):

    masks, params = jaxprune.lottery_round(trained, rewind_params, masks, 0.2)
    tx = jaxprune.static_sparse(optax.adam(lr), masks=masks)   # retrain with the masks fixed

The control column retrains the same masks from a fresh random initialisation: a winning
ticket trains better than that control at high sparsity.
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import jax.numpy as jnp
import optax

import jaxprune
from jaxprune import lottery_round, static_sparse
from jaxprune.transforms import lottery_sparsity


def make_run(loss_fn, *, lr, steps, batch_size):
  """A jitted ``run(params, masks, key, x, y) -> params``: ``steps`` adam steps (common's loop).

  ``masks=None`` trains dense; otherwise ``static_sparse`` keeps the masks fixed. The masks are
  an argument (the trainer's traced ``hyper``), so every round reuses one compiled function.
  """
  make_tx = lambda masks: (optax.adam(lr) if masks is None
                           else static_sparse(optax.adam(lr), masks=masks))
  trainer = common.make_trainer(loss_fn, make_tx, batch_size=batch_size, steps=steps)
  return lambda params, masks, key, x, y: trainer(params, None, key, x, y, hyper=masks)[0]


def kernel_sparsity(params) -> float:
  """Fraction of zeros over the kernels (``ndim >= 2``, jaxprune.summary's default)."""
  return float(jaxprune.summary.sparsity(params)["total"])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=None, help="pruning rounds (default 10)")
  parser.add_argument("--fraction", type=float, default=0.2,
                      help="fraction of the remaining weights pruned per round")
  parser.add_argument("--rewind-step", type=int, default=0,
                      help="rewind to the weights at this step (0: to initialisation)")
  parser.add_argument("--steps", type=int, default=None, help="training steps per round")
  parser.add_argument("--global", dest="scope", action="store_const", const="global",
                      default="leaf", help="one magnitude threshold over all kernels")
  parser.add_argument("--no-control", dest="control", action="store_false",
                      help="skip the random re-initialisation control")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--width", type=int, default=None, help="MLP hidden width (default 256)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
  args = parser.parse_args(argv)
  defaults = dict(rounds=2, steps=200, width=64) if args.quick else dict(
      rounds=10, steps=3000, width=256)
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if not 0.0 < args.fraction < 1.0:
    parser.error(f"--fraction must be in (0, 1); got {args.fraction}")
  if args.rounds < 1 or not 0 <= args.rewind_step < args.steps:
    parser.error("--rounds must be >= 1 and 0 <= --rewind-step < --steps")

  data = common.load_dataset("mnist1d", num_samples=1000 if args.quick else None)
  model = common.MLP(data.num_classes, (args.width, args.width))
  loss_fn = common.make_loss(model)
  evaluate = common.make_evaluate(model)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  init_key, data_key, control_key = jax.random.split(jax.random.key(args.seed), 3)
  init = common.init_params(model, data, init_key)
  start = time.perf_counter()

  # Dense training, keeping the weights at step k to rewind to.
  k = args.rewind_step
  run_rest = make_run(loss_fn, lr=args.lr, steps=args.steps - k, batch_size=args.batch_size)
  rewind = init
  if k:
    rewind = make_run(loss_fn, lr=args.lr, steps=k, batch_size=args.batch_size)(
        init, None, data_key, x, y)
  trained = run_rest(rewind, None, jax.random.fold_in(data_key, 1), x, y)
  dense_acc = float(evaluate(trained, x_test, y_test)[1])
  rows = [(0, 0.0, dense_acc, None)]

  masks = None
  for r in range(1, args.rounds + 1):
    masks, params = lottery_round(trained, rewind, masks, args.fraction, scope=args.scope)
    # Retrain the ticket from the rewound weights with the same data order as the dense run.
    trained = run_rest(params, masks, jax.random.fold_in(data_key, 1), x, y)
    acc = float(evaluate(trained, x_test, y_test)[1])
    control = None
    if args.control:  # the same masks from a fresh random initialisation
      fresh = common.init_params(model, data, jax.random.fold_in(control_key, r))
      fresh = jaxprune.apply_masks(fresh, masks)
      control_trained = run_rest(fresh, masks, jax.random.fold_in(data_key, 1), x, y)
      control = float(evaluate(control_trained, x_test, y_test)[1])
    rows.append((r, kernel_sparsity(trained), acc, control))
  seconds = time.perf_counter() - start

  print(f"Lottery tickets on MNIST-1D: MLP 40-{args.width}-{args.width}-10, adam lr {args.lr}, "
        f"{args.steps - k} steps per round, pruning {args.fraction:.0%} of the remaining weights "
        f"per {'kernel' if args.scope == 'leaf' else 'network'} per round, rewinding to "
        f"{'initialisation' if k == 0 else f'step {k}'}.")
  print(f"{'round':>5}{'sparsity':>10}{'(planned)':>11}{'test acc':>10}{'control':>10}")
  for r, sparsity, acc, control in rows:
    planned = lottery_sparsity(args.fraction, r)
    control_text = "" if control is None else f"{100 * control:9.1f}%"
    print(f"{r:>5}{sparsity:>9.1%}{planned:>10.1%} {100 * acc:>8.1f}%{control_text:>10}")
  best = [r for r in rows[1:] if r[2] >= dense_acc]
  if best:
    print(f"highest sparsity at or above dense accuracy ({100 * dense_acc:.1f}%): "
          f"{max(b[1] for b in best):.1%}")
  else:
    print(f"no round reached the dense accuracy ({100 * dense_acc:.1f}%)")
  print(f"({len(rows)} trainings{' + controls' if args.control else ''} in {seconds:.0f} s)")
  return {"dense": dense_acc, "rounds": [dict(round=r, sparsity=s, acc=a, control=c)
                                         for r, s, a, c in rows]}


if __name__ == "__main__":
  main()
