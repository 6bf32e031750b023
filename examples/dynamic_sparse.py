"""Dynamic sparse training on MNIST-1D: dense vs static vs SET vs RigL, ERK and uniform.

    python examples/dynamic_sparse.py            # 80% and 90%, 3 seeds: a few minutes on a CPU
    python examples/dynamic_sparse.py --quick    # a smoke test (seconds)

Every sparse run trains a sparse MLP from step 0 (no dense pre-training): the optimizer wraps
adam and keeps the masks in its state.

    tx = jaxprune.rigl(optax.adam(lr), 0.9, every=100, end=int(0.75 * steps), key=key)
    state = tx.init(params)
    params = jaxprune.apply_masks(params, jaxprune.masks_of(state))  # sparse from the start
    ...  updates, state = tx.update(grads, state, params)            # raw dense gradients

``static`` keeps its random initial mask, SET replaces a fraction of each layer's weights by
random ones every ``--every`` steps and RigL grows the ones with the largest dense gradient.
The table shows the mean test accuracy (± std) over seeds.
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
from jaxprune import rigl, sparse_evolution, static_sparse
from jaxprune.transforms import masks_of

METHODS = ("dense", "static", "set", "rigl")
ALLOCATIONS = ("erk", "uniform")


def make_tx(method, sparsity, allocation, *, lr, steps, every, drop_fraction, key):
  """The optimizer of one method: adam, wrapped for the sparse methods."""
  inner = optax.adam(lr)
  if method == "dense":
    return inner
  if method == "static":
    return static_sparse(inner, sparsity, allocate=allocation, key=key)
  make = rigl if method == "rigl" else sparse_evolution
  return make(inner, sparsity, every=every, end=int(0.75 * steps), drop_fraction=drop_fraction,
              allocate=allocation, key=key)


def train_one(method, sparsity, allocation, seed, *, data, model, loss_fn, evaluate, args,
              cache):
  """Test accuracy and final sparsity of one run (compiled once per method and setting)."""
  key = jax.random.key(seed)
  init_key, mask_key, data_key = jax.random.split(key, 3)
  tx = make_tx(method, sparsity, allocation, lr=args.lr, steps=args.steps, every=args.every,
               drop_fraction=args.drop_fraction, key=mask_key)
  params = common.init_params(model, data, init_key)
  state = tx.init(params)
  if method != "dense":
    params = jaxprune.apply_masks(params, masks_of(state))  # sparse from the first step
  # The transform's settings are static; its key is only used at init, so runs of one
  # setting share a compiled trainer (the SET key lives in the state).
  name = (method, sparsity, allocation)
  if name not in cache:
    cache[name] = common.make_trainer(loss_fn, tx, steps=args.steps, batch_size=args.batch_size)
  params, state, _ = cache[name](params, state, data_key, jnp.asarray(data.x_train),
                                 jnp.asarray(data.y_train))
  _, acc = evaluate(params, jnp.asarray(data.x_test), jnp.asarray(data.y_test))
  return float(acc), float(jaxprune.summary.sparsity(params)["total"])  # over the kernels


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
  parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3)")
  parser.add_argument("--sparsities", type=float, nargs="+", default=None,
                      help="target sparsities of the kernels (default 0.8 0.9)")
  parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
  parser.add_argument("--allocations", nargs="+", choices=ALLOCATIONS, default=None)
  parser.add_argument("--every", type=int, default=None, help="steps between mask updates")
  parser.add_argument("--drop-fraction", type=float, default=0.3)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--width", type=int, default=None, help="MLP hidden width (default 256)")
  parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test)")
  args = parser.parse_args(argv)
  quick = dict(steps=300, seeds=1, sparsities=[0.9], allocations=["erk"], every=50, width=64)
  full = dict(steps=3000, seeds=3, sparsities=[0.8, 0.9], allocations=list(ALLOCATIONS),
              every=100, width=256)
  for name, value in (quick if args.quick else full).items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.steps < 1 or args.seeds < 1 or args.every < 1:
    parser.error("--steps, --seeds and --every must be >= 1")
  if any(not 0.0 < s < 1.0 for s in args.sparsities):
    parser.error(f"--sparsities must be in (0, 1); got {args.sparsities}")

  data = common.load_dataset("mnist1d", num_samples=1000 if args.quick else None)
  model = common.MLP(data.num_classes, (args.width, args.width))
  loss_fn = common.make_loss(model)
  evaluate = common.make_evaluate(model)
  start = time.perf_counter()
  results, cache = {}, {}
  settings = [("dense", 0.0, "-")] if "dense" in args.methods else []
  settings += [(m, s, a) for s in args.sparsities for a in args.allocations
               for m in args.methods if m != "dense"]
  for method, sparsity, allocation in settings:
    runs = [train_one(method, sparsity, allocation, seed, data=data, model=model,
                      loss_fn=loss_fn, evaluate=evaluate, args=args, cache=cache)
            for seed in range(args.seeds)]
    accs = np.array([acc for acc, _ in runs])
    results[(method, sparsity, allocation)] = dict(
        mean=float(accs.mean()), std=float(accs.std()), accs=accs.tolist(),
        sparsity=float(np.mean([s for _, s in runs])))
  seconds = time.perf_counter() - start

  print(f"MNIST-1D, MLP 40-{args.width}-{args.width}-10, adam lr {args.lr}, {args.steps} steps "
        f"of batch {args.batch_size}; RigL/SET: every {args.every} steps until "
        f"{int(0.75 * args.steps)}, drop fraction {args.drop_fraction} (cosine decay). "
        f"Test accuracy, mean ± std over {args.seeds} seed(s):")
  print(f"{'method':8}{'alloc':>9}{'sparsity':>10}{'test acc':>16}")
  for (method, sparsity, allocation), r in results.items():
    print(f"{method:8}{allocation:>9}{r['sparsity']:>9.1%} {100 * r['mean']:>9.1f}"
          f" ± {100 * r['std']:.1f}%")
  print(f"({len(results)} settings x {args.seeds} seed(s) in {seconds:.0f} s)")
  return {f"{m}/{a}/{s}": r for (m, s, a), r in results.items()}


if __name__ == "__main__":
  main()
