"""Second-order saliency and compensation: cost, memory and one-shot pruning quality.

Prints three tables for an MLP trained on MNIST-1D (or sklearn digits with --dataset digits):

1. cost of a Hessian-vector product, a GGN-vector product and one Hutchinson probe, relative
   to one gradient on the same batch, and of drawing the probes;
2. compiled temporary memory of ``hessian_diag`` as a function of ``batch_size`` (the probe cap);
3. test loss and accuracy after one-shot layerwise pruning at 50/70/80/90% sparsity with
   magnitude, saliency (|w·g|), OBD with each diagonal estimator and Taylor-2 scores, each
   without and with ``jaxprune.compensation.compensate`` (GGN, CG), and the error of the
   Hutchinson GGN diagonal against the exact one;
4. accuracy after magnitude pruning + ``compensate`` for a few CG step counts and dampings.

    python benchmarks/second_order.py                   # about 3 minutes on 2 CPU cores
    python benchmarks/second_order.py --dataset digits
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import common  # noqa: E402  the examples' shared data and training loop
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import apply_masks, masks, scores
from jaxprune.compensation import compensate
from jaxprune.scores import ModelLoss
from jaxprune.scores._diag import default_batch, rademacher

SPARSITIES = (0.5, 0.7, 0.8, 0.9)


def init_mlp(key, sizes):
  """A plain-pytree MLP (a list of ``{"kernel", "bias"}`` layers): jaxprune needs no framework."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"kernel": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "bias": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def apply_mlp(params, x):
  for i, layer in enumerate(params):
    x = x @ layer["kernel"] + layer["bias"]
    if i < len(params) - 1:
      x = jax.nn.relu(x)
  return x


def xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


MODEL = ModelLoss(apply_mlp, xent)


def train(params, x, y, steps: int, batch: int = 128):
  """``steps`` Adam steps with the examples' shared training loop (``common.make_trainer``)."""
  run = common.make_trainer(MODEL, optax.adam(1e-3), batch_size=batch, steps=steps)
  return run(params, None, jax.random.key(1), x, y)[0]


def timeit(fn, *args, repeats: int = 5) -> float:
  """Fastest of ``repeats`` runs of ``fn(*args)`` after a warm-up call (compilation excluded).

  The minimum, not the median: on a shared machine it is the least disturbed by other load.
  """
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def table(title, header, rows):
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
  print(f"\n{title}\n{line(header)}\n{'  '.join('-' * w for w in widths)}")
  for r in rows:
    print(line(r))


def cost_table(params, x, y, probes: int):
  key = jax.random.key(0)
  vec = jax.tree.map(jnp.ones_like, params)
  diag = lambda **kw: jax.jit(lambda p: scores.hessian_diag(MODEL, p, x, y, **kw))
  leaves = jax.tree.leaves(params)
  n = x.shape[0]
  rows = []
  ops = [
      ("gradient", jax.jit(lambda p: jax.grad(MODEL)(p, x, y)), (params,), 1),
      ("Hessian-vector product (hvp)",
       jax.jit(lambda p, v: scores.hvp(MODEL, p, v, x, y)), (params, vec), 1),
      ("GGN-vector product (ggn_vp)",
       jax.jit(lambda p, v: scores.ggn_vp(apply_mlp, xent, p, v, x, y)), (params, vec), 1),
      (f"Hutchinson on H, per probe ({probes} probes)",
       diag(key=key, probes=probes), (params,), probes),
      (f"Hutchinson on GGN, per probe ({probes} probes)",
       diag(key=key, probes=probes, method="ggn"), (params,), probes),
      (f"Hutchinson on H, per probe, batch_size=16 (vmap)",
       diag(key=key, probes=probes, batch_size=16), (params,), probes),
      ("probe draw, jaxprune (hash of one draw), per probe",
       jax.jit(lambda k: rademacher(k, leaves)(jnp.arange(probes))), (key,), probes),
      ("probe draw, threefry per probe, per probe",
       jax.jit(lambda k: [jax.vmap(lambda i: jax.random.rademacher(
           jax.random.fold_in(k, i), w.shape, w.dtype))(jnp.arange(probes)) for w in leaves]),
       (key,), probes),
      (f"exact Fisher diagonal, all {n} examples x 10 classes",
       diag(method="fisher"), (params,), 1),
      (f"empirical Fisher diagonal, all {n} examples",
       diag(method="empirical_fisher"), (params,), 1),
  ]
  t_grad = None
  for name, fn, args, per in ops:
    t = timeit(fn, *args) / per
    t_grad = t_grad or t
    rows.append((name, f"{t * 1e3:.2f}", f"{t / t_grad:.2f}"))
  table(f"Cost relative to one gradient (batch {n}, {sum(w.size for w in leaves)} params, "
        f"{jax.devices()[0].platform}; default batch_size={default_batch()})",
        ("operation", "ms", "x gradient"), rows)


def memory_table(params, x, y, probes: int):
  rows = []
  for b in (1, 4, 16, probes):
    f = jax.jit(lambda p: scores.hessian_diag(MODEL, p, x, y, key=jax.random.key(0),
                                              probes=probes, batch_size=b))
    stats = f.lower(params).compile().memory_analysis()
    temp = getattr(stats, "temp_size_in_bytes", None) if stats is not None else None
    rows.append((b, "n/a" if temp is None else f"{temp / 2**20:.1f}"))
  table(f"hessian_diag(probes={probes}) compiled temporary memory vs batch_size",
        ("batch_size", "temp MiB"), rows)


def quality_table(params, calib, xt, yt, args):
  key = jax.random.key(2)
  grads = jax.jit(jax.grad(MODEL))(params, *calib)
  methods = {
      "magnitude": lambda p: scores.magnitude(p),
      "saliency |w*g|": lambda p: scores.saliency(p, grads),
      "OBD hutchinson": lambda p: scores.obd(MODEL, p, *calib, key=key, probes=args.probes),
      "OBD ggn-hutchinson": lambda p: scores.obd(MODEL, p, *calib, key=key, probes=args.probes,
                                                 method="ggn"),
      "OBD fisher (exact)": lambda p: scores.obd(MODEL, p, *calib, method="fisher"),
      "OBD empirical fisher": lambda p: scores.obd(MODEL, p, *calib, method="empirical_fisher"),
      "Taylor-2": lambda p: scores.taylor2(MODEL, p, *calib),
  }
  evaluate = jax.jit(lambda p: (MODEL(p, xt, yt),
                                jnp.mean(jnp.argmax(apply_mlp(p, xt), -1) == yt)))
  comp = jax.jit(lambda p, m: compensate(MODEL, p, m, *calib, steps=args.cg_steps,
                                         damping=args.damping))
  loss, acc = evaluate(params)
  print(f"\ndense: test loss {float(loss):.3f}, accuracy {float(acc):.3f}")
  acc_rows, loss_rows = [], []
  for name, fn in methods.items():
    t = time.perf_counter()
    s = jax.block_until_ready(jax.jit(fn)(params))
    elapsed = time.perf_counter() - t
    accs, losses = [name, f"{elapsed:.1f}"], [name]
    for sparsity in SPARSITIES:
      m = masks.topk(s, sparsity)
      for p in (apply_masks(params, m), comp(params, m)):
        loss, acc = evaluate(p)
        accs.append(f"{float(acc):.3f}")
        losses.append(f"{float(loss):.3f}")
    acc_rows.append(accs)
    loss_rows.append(losses)
  cols = [c for s in SPARSITIES for c in (f"{int(s * 100)}%", f"{int(s * 100)}%+comp")]
  comp_desc = (f"+comp = compensate(GGN, {args.cg_steps} CG steps, damping {args.damping}) on "
               f"{args.calib} calibration examples")
  table(f"Test accuracy after one-shot layerwise pruning of the kernels ({comp_desc}; "
        "score s = seconds incl. compilation)", ["score", "score s"] + cols, acc_rows)
  table("Test loss after one-shot layerwise pruning", ["score"] + cols, loss_rows)
  exact = jax.jit(lambda p: scores.hessian_diag(MODEL, p, *calib, method="fisher"))(params)
  rows = []
  for probes in (16, args.probes, 4 * args.probes):
    est = jax.jit(lambda p: scores.hessian_diag(MODEL, p, *calib, key=key, probes=probes,
                                                method="ggn"))(params)
    a, b = (np.concatenate([np.ravel(v) for v in jax.tree.leaves(d)]) for d in (est, exact))
    rows.append((probes, f"{np.linalg.norm(a - b) / np.linalg.norm(b):.2f}",
                 f"{np.mean(a < 0):.2f}"))
  table("Hutchinson on the GGN vs the exact GGN (Fisher) diagonal",
        ("probes", "relative error", "fraction < 0"), rows)


def compensation_table(params, calib, xt, yt, args):
  evaluate = jax.jit(lambda p: jnp.mean(jnp.argmax(apply_mlp(p, xt), -1) == yt))
  rows = []
  for steps in (10, args.cg_steps):
    comp = jax.jit(lambda p, m, lam: compensate(MODEL, p, m, *calib, steps=steps, damping=lam))
    for damping in (1e-2, 1e-3, 1e-4):
      row = [steps, damping]
      for sparsity in (0.7, 0.8):
        m = masks.topk(scores.magnitude(params), sparsity)
        row.append(f"{float(evaluate(comp(params, m, damping))):.3f}")
      rows.append(row)
  base = [f"{float(evaluate(apply_masks(params, masks.topk(scores.magnitude(params), s)))):.3f}"
          for s in (0.7, 0.8)]
  rows.append(["no compensation", "", *base])
  table("compensate settings: test accuracy after magnitude pruning",
        ("CG steps", "damping", "70%", "80%"), rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", choices=("mnist1d", "digits"), default="mnist1d")
  parser.add_argument("--samples", type=int, default=20000, help="MNIST-1D samples (80% train)")
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--train-steps", type=int, default=6000)
  parser.add_argument("--calib", type=int, default=1024, help="calibration examples")
  parser.add_argument("--calib-from", choices=("heldout", "train"), default="heldout",
                      help="calibration examples held out from training, or training ones")
  parser.add_argument("--probes", type=int, default=64)
  parser.add_argument("--cg-steps", type=int, default=50)
  parser.add_argument("--damping", type=float, default=1e-3)
  parser.add_argument("--skip", choices=("cost", "memory", "quality", "settings"), nargs="*",
                      default=())
  args = parser.parse_args()

  start = time.perf_counter()
  data = common.load_dataset(args.dataset, num_samples=args.samples)
  x, y, xt, yt = map(jnp.asarray, (data.x_train, data.y_train, data.x_test, data.y_test))
  # Calibration examples (scores, compensation) are held out from training: curvature on
  # examples an overfit model has memorised is close to zero and ranks weights poorly.
  calib = (x[:args.calib], y[:args.calib])
  if args.calib_from == "heldout":
    x, y = x[args.calib:], y[args.calib:]
  params = init_mlp(jax.random.key(0), (x.shape[1], args.hidden, args.hidden, 10))
  params = train(params, x, y, args.train_steps)
  print(f"{args.dataset}: {x.shape[0]} train / {xt.shape[0]} test examples, MLP "
        f"{x.shape[1]}-{args.hidden}-{args.hidden}-10, {args.train_steps} Adam steps "
        f"({time.perf_counter() - start:.0f} s incl. data)")
  if "cost" not in args.skip:
    cost_table(params, *calib, args.probes)
  if "memory" not in args.skip:
    memory_table(params, *calib, args.probes)
  if "quality" not in args.skip:
    quality_table(params, calib, xt, yt, args)
  if "settings" not in args.skip:
    compensation_table(params, calib, xt, yt, args)
  print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
