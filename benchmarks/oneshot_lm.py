"""One-shot LM pruning: quality table on the reference GPT, and cost on a GPT-2-small shape.

    python benchmarks/oneshot_lm.py table --checkpoint lm_checkpoint    # needs train_lm.py
    python benchmarks/oneshot_lm.py cost --method sparsegpt --sequences 64
    python benchmarks/oneshot_lm.py cost --method wanda                  # 64 x 256 tokens
    python benchmarks/oneshot_lm.py cost --method wanda --sequences 8 16  # fit & extrapolate

``table``: validation perplexity (held-out stdlib files) of the dense model and at 50/60/70%
unstructured and 2:4 for magnitude, Wanda, SparseGPT and Wanda/SparseGPT with OWL, with the
time each takes (see ``examples/prune_lm.py``).

``cost``: a GPT-2-small-shaped model (12 blocks of width 768 with 3072-wide MLPs, a
50257-token vocabulary; the blocks are GPT-2 small's 85M parameters, the untied byte head of
``examples/lm.py`` makes 162.5M in all; random weights) whose 72 block kernels are pruned to
50% with ``--sequences`` calibration sequences of 256 tokens (64 by default), in batches of 8;
each run is a fresh process so that its peak memory (max RSS) is its own. Given several sizes,
the time is also fitted as ``fixed + per_sequence · sequences`` and extrapolated to 64
sequences (the token-proportional work, forward passes and ``XᵀX``, is linear in the
sequences; the per-layer solves are not).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "examples"))

import lm  # noqa: E402
import prune_lm  # noqa: E402

GPT2 = dict(layers=12, width=768, heads=12, context=256, vocab=50257)


def cost_once(method: str, sequences: int, layers: int) -> dict:
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jaxprune import oneshot  # noqa: PLC0415

  cfg = lm.Config(**{**GPT2, "layers": layers})
  model = lm.GPT(cfg)
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 256), np.int32))["params"]
  count = sum(x.size for x in jax.tree.leaves(params))
  rng = np.random.default_rng(0)
  data = rng.integers(0, cfg.vocab, (sequences, cfg.context)).astype(np.int32)
  calibration = [data[i:i + 8] for i in range(0, sequences, 8)]
  apply = lambda p, x: model.apply({"params": p}, x)
  start = time.perf_counter()
  new, _ = oneshot.prune(apply, params, calibration, method=method, sparsity=0.5,
                         where=prune_lm.WHERE)
  jax.block_until_ready(new)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
  return dict(method=method, sequences=sequences, layers=layers, params=count,
              seconds=seconds, peak_gib=peak)


def cost(args):
  results = []
  for s in args.sequences:
    proc = subprocess.run([sys.executable, __file__, "_cost_once", args.method, str(s),
                           str(args.layers)], capture_output=True, text=True, check=False)
    if proc.returncode:
      raise SystemExit(proc.stderr[-3000:])
    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    r = results[-1]
    print(f"{r['method']:9s} {r['layers']:2d} blocks {r['params'] / 1e6:6.1f}M params  "
          f"{r['sequences']:3d} x 256 tokens  {r['seconds']:7.1f} s  peak {r['peak_gib']:.2f} GiB",
          flush=True)
  if len(results) >= 2:
    (s0, t0), (s1, t1) = [(r["sequences"], r["seconds"]) for r in results[:2]]
    slope = (t1 - t0) / (s1 - s0)
    fixed = t0 - slope * s0
    scale = 12 / args.layers
    print(f"fit: {fixed:.1f} s + {slope:.2f} s/sequence -> 64 sequences: "
          f"{(fixed + 64 * slope) * scale:.0f} s for 12 blocks (x{scale:g} from {args.layers})")


def table(args):
  train, valid = lm.corpus()
  model, params = lm.load(args.checkpoint)
  cal = lm.windows(train, args.calibration, model.cfg.context, seed=99)[:, :-1]
  calibration = [cal[i:i + 8] for i in range(0, len(cal), 8)]
  val = lm.windows(valid, args.valid, model.cfg.context, seed=1234)
  rows = prune_lm.evaluate(model, params, calibration, val, prune_lm.runs(args.sparsity))
  print()
  print(prune_lm.table(rows))


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "_cost_once":
    print(json.dumps(cost_once(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="what", required=True)
  t = sub.add_parser("table")
  t.add_argument("--checkpoint", default="lm_checkpoint")
  t.add_argument("--calibration", type=int, default=32)
  t.add_argument("--valid", type=int, default=256)
  t.add_argument("--sparsity", type=float, nargs="*", default=[0.5, 0.6, 0.7])
  c = sub.add_parser("cost")
  c.add_argument("--method", default="sparsegpt", choices=("sparsegpt", "wanda", "magnitude"))
  c.add_argument("--sequences", type=int, nargs="*", default=[64])
  c.add_argument("--layers", type=int, default=12)
  args = parser.parse_args()
  (table if args.what == "table" else cost)(args)


if __name__ == "__main__":
  main()
