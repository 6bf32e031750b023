"""Structured pruning of the MNIST-1D CNN: remove 50% of the channels, fine-tune, compare.

Trains the CNN of ``common.py`` on MNIST-1D (generated offline), traces it with
``jaxprune.structure.trace``, removes half of the channels of every prunable group by each group
score (L2 and L1 norms, first-order Taylor, the sum of an OBD diagonal and the Hessian trace per
group from ``jaxprune.scores``, random), fine-tunes every small model and prints params, FLOPs
(XLA ``cost_analysis``), CPU latency (batch 256) and test accuracy before and after.

Usage: python examples/structured_pruning.py [--quick] [--steps 3000] [--finetune 1500]
  [--sparsity 0.5]
"""

from __future__ import annotations

import argparse

import common  # first: it puts the repository on sys.path when jaxprune is not installed
import jax
import jax.numpy as jnp
import optax

import jaxprune
from jaxprune import structure


def accuracy(fn, variables, x, y):
  return float(jnp.mean(jnp.argmax(jax.jit(fn)(variables, x), -1) == y))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test")
  parser.add_argument("--steps", type=int, default=3000, help="dense training steps")
  parser.add_argument("--finetune", type=int, default=1500, help="fine-tuning steps")
  parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of channels cut")
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.finetune = 20, 10
  data = common.load_dataset("mnist1d", num_samples=600 if args.quick else None)
  model = common.CNN(data.num_classes, data.shape)
  key = jax.random.key(0)
  params = common.init_params(model, data, key)
  loss_fn = common.make_loss(model)
  tx = optax.adam(1e-3)
  params = common.train(loss_fn, params, tx, data, steps=args.steps, key=key)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  x_bench = x_test[:256]
  variables = {"params": params}

  graph = structure.trace(model.apply, variables, x_test[:2])
  print(graph, "\n")
  print("(linen: the small model is the returned function small_fn(small_variables, x); its "
        "modules keep their old `features`)\n")
  batch_x, batch_y = jnp.asarray(data.x_train[:512]), jnp.asarray(data.y_train[:512])
  grads = {"params": jax.grad(loss_fn)(params, batch_x, batch_y)}
  vloss = lambda v, x, y: loss_fn(v["params"], x, y)  # noqa: E731
  probes = 2 if args.quick else 16
  scores = {  # element scores from jaxprune.scores are summed per channel of each group
      "l2": lambda: "l2",
      "l1": lambda: "l1",
      "taylor": lambda: "taylor",
      "obd": lambda: jaxprune.scores.obd(vloss, variables, batch_x, batch_y, key=key,
                                         probes=probes),
      "hessian-trace": lambda: jaxprune.scores.hessian_diag(vloss, variables, batch_x, batch_y,
                                                            key=key, probes=probes),
      "random": lambda: "random",
  }
  if args.quick:  # the smoke test: one norm and one first-order score
    scores = {k: scores[k] for k in ("l2", "taylor")}
  repeats = 2 if args.quick else 10
  flops, ms = common.cost(model.apply, variables, x_bench, repeats)
  dense_acc = accuracy(model.apply, variables, x_test, y_test)
  n_dense = sum(x.size for x in jax.tree.leaves(params))
  rows = [("dense", n_dense, flops, 1.0, ms, dense_acc, dense_acc)]
  for name, score in scores.items():
    small, small_fn = structure.prune(graph, variables, args.sparsity, scores=score(),
                                      grads=grads, key=jax.random.key(1))
    before = accuracy(small_fn, small, x_test, y_test)
    small_loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        small_fn({"params": p}, x), y).mean()
    tuned = common.train(small_loss, small["params"], tx, data, steps=args.finetune, key=key)
    after = accuracy(small_fn, {"params": tuned}, x_test, y_test)
    f, t = common.cost(small_fn, {"params": tuned}, x_bench, repeats)
    rows.append((name, sum(x.size for x in jax.tree.leaves(tuned)), f, flops / f, t, before,
                 after))
  print(f"{int(args.sparsity * 100)}% of the channels removed; latency: batch 256 on CPU, "
        "median of 10 (machine load moves it)")
  print(f"{'score':14} {'params':>7} {'FLOPs':>9} {'fewer':>6} {'ms':>7} {'pruned':>7} "
        f"{'tuned':>7}")
  for r in rows:
    print(f"{r[0]:14} {r[1]:7d} {r[2]:9.3g} {r[3]:5.2f}x {r[4]:7.3f} {100 * r[5]:6.1f}% "
          f"{100 * r[6]:6.1f}%")


if __name__ == "__main__":
  main()
