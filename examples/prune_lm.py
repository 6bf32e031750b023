"""Prunes the reference byte-level GPT in one shot with every method and prints perplexities.

    python examples/train_lm.py --out lm_checkpoint
    python examples/prune_lm.py --checkpoint lm_checkpoint
    python examples/prune_lm.py --quick        # trains a tiny model first; seconds

All linear layers of the transformer blocks (query/key/value/out/fc1/fc2 kernels) are pruned;
embeddings and the byte head stay dense, as in the SparseGPT and Wanda papers. Calibration:
windows of the training files; perplexity: held-out files.
"""

from __future__ import annotations

import argparse
import time

import lm

import jaxprune
from jaxprune import oneshot

WHERE = r"block\d+/.*/kernel"
# OWL as in the paper: one outlier ratio and one sparsity per transformer block ("block3/...").
OWL = oneshot.OWL(lam=0.08, m=5.0, group=lambda name: name.split("/")[0])


def runs(sparsities, nm=True):
  """``(label, kwargs)`` for every method at every sparsity (OWL for unstructured only)."""
  out = []
  for s in sparsities:
    out.append((f"magnitude/layer {s:.0%}", dict(method="magnitude", sparsity=s, per="layer")))
    for method in ("magnitude", "wanda", "sparsegpt"):
      out.append((f"{method} {s:.0%}", dict(method=method, sparsity=s)))
    for method in ("wanda", "sparsegpt"):
      out.append((f"{method}+OWL {s:.0%}", dict(method=method, sparsity=s, owl=OWL)))
  if nm:
    for method in ("magnitude", "wanda", "sparsegpt"):
      out.append((f"{method} 2:4", dict(method=method, n=2, m=4)))
  return out


def evaluate(model, params, calibration, valid, configs, progress=False):
  """Rows ``(label, perplexity, seconds, sparsity of the pruned kernels)``."""
  apply = lambda p, x: model.apply({"params": p}, x)
  rows = [("dense", lm.perplexity(model, params, valid), 0.0, 0.0)]
  for label, kwargs in configs:
    start = time.perf_counter()
    new, masks = oneshot.prune(apply, params, calibration, where=WHERE, progress=progress,
                               **kwargs)
    seconds = time.perf_counter() - start
    total = float(jaxprune.summary.sparsity(new, where=WHERE)["total"])
    rows.append((label, lm.perplexity(model, new, valid), seconds, total))
    print(f"{label:18s} ppl {rows[-1][1]:8.3f}  {seconds:6.1f} s  sparsity {total:.3f}",
          flush=True)
  return rows


def table(rows) -> str:
  dense = rows[0][1]
  lines = [f"{'method':18s} {'ppl':>8s} {'vs dense':>9s} {'time s':>7s} {'sparsity':>8s}"]
  for label, ppl, seconds, total in rows:
    lines.append(f"{label:18s} {ppl:8.3f} {ppl / dense - 1:+8.1%} {seconds:7.1f} {total:8.3f}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", default="lm_checkpoint")
  parser.add_argument("--calibration", type=int, default=32, help="calibration windows")
  parser.add_argument("--valid", type=int, default=256, help="validation windows")
  parser.add_argument("--sparsity", type=float, nargs="*", default=[0.5, 0.6, 0.7])
  parser.add_argument("--progress", action="store_true")
  parser.add_argument("--quick", action="store_true", help="tiny model trained here (seconds)")
  args = parser.parse_args(argv)
  if args.quick:
    train, valid = lm.corpus(200_000)
    cfg = lm.Config(layers=2, width=64, heads=2, context=32)
    model, params = lm.train(cfg, train, steps=30, batch=16, log_every=0)
    configs = [("wanda 50%", dict(method="wanda", sparsity=0.5)),
               ("sparsegpt+OWL 50%", dict(method="sparsegpt", sparsity=0.5, owl=OWL)),
               ("sparsegpt 2:4", dict(method="sparsegpt", n=2, m=4))]
    n_cal, n_val = 8, 32
  else:
    train, valid = lm.corpus()
    model, params = lm.load(args.checkpoint)
    cfg = model.cfg
    configs = runs(args.sparsity)
    n_cal, n_val = args.calibration, args.valid
  cal = lm.windows(train, n_cal, cfg.context, seed=99)[:, :-1]
  calibration = [cal[i:i + 8] for i in range(0, len(cal), 8)]
  val = lm.windows(valid, n_val, cfg.context, seed=1234)
  rows = evaluate(model, params, calibration, val, configs, progress=args.progress)
  print()
  print(table(rows))


if __name__ == "__main__":
  main()
