"""Bytes on disk of a pruned model: orbax checkpoints vs ``jaxprune.export`` float/int8/int4.

For an MLP-like parameter tree (embedding + blocks of two dense layers + biases, default
~4.2M params), magnitude-pruned layer-wise (``masks.topk``) at 50/80/90/95% sparsity:

  dense        orbax ``StandardCheckpointer`` of the unpruned params (zstd inside tensorstore)
  pruned       the same for the pruned params (zeros stored; zstd squeezes them)
  float        ``export.save(params, masks)``: kept values exact + entropy-coded masks
  int8         ``export.save(..., bits=8)``: per-channel symmetric int8 of the kept weights
  int4         ``export.save(..., bits=4, group_size=128)``: per-group int4, two per byte

each in MB and as a ratio to ``dense`` and to ``pruned``, plus the mask's cost in bits per
masked weight next to its entropy H(s), and whether the float export loads back bit-exact.
Targets of issue 14 at 90%: int8 <= 4% of dense and <= 1/3 of pruned; float <= 0.7x pruned.

Usage: python benchmarks/export_size.py [--width 256] [--blocks 4] [--vocab 4096]
       [--dtype float32|bfloat16] [--compression best|fast|none]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from jaxprune import export, masks, scores  # noqa: E402

SPARSITIES = (0.5, 0.8, 0.9, 0.95)


def make_params(width: int, blocks: int, vocab: int, dtype, seed: int = 0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(dtype)
  return {
      "embed": normal(vocab, width),
      "blocks": [{"up": {"kernel": normal(width, 4 * width), "bias": np.zeros(4 * width, dtype)},
                  "down": {"kernel": normal(4 * width, width), "bias": np.zeros(width, dtype)}}
                 for _ in range(blocks)],
      "head": {"kernel": normal(width, vocab), "bias": np.zeros(vocab, dtype)},
  }


def size(path) -> int:
  path = Path(path)
  if path.is_file():
    return path.stat().st_size
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def orbax_save(path: Path, tree) -> int:
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, tree, force=True)
  return size(path)


def entropy(s: float) -> float:
  return 0.0 if s in (0.0, 1.0) else -(s * math.log2(s) + (1 - s) * math.log2(1 - s))


def run(args, root: Path):
  dtype = {"float32": np.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  params = make_params(args.width, args.blocks, args.vocab, dtype)
  n = sum(x.size for x in jax.tree.leaves(params))
  dense = orbax_save(root / "dense", params)
  rows = []
  for s in SPARSITIES:
    m = jax.device_get(masks.topk(scores.magnitude(params), s))
    pruned = jax.device_get(masks.apply_masks(params, m))
    pruned_bytes = orbax_save(root / f"pruned{s}", pruned)
    out = {}
    for name, opts in (("float", {}), ("int8", {"bits": 8}),
                       ("int4", {"bits": 4, "group_size": 128})):
      start = time.perf_counter()
      f = export.save(root / f"{name}{s}", params, m, compression=args.compression, force=True,
                      **opts)
      out[name] = (size(f), time.perf_counter() - start)
    loaded, _ = export.load(root / f"float{s}")
    exact = all(np.asarray(a).tobytes() == np.asarray(b).tobytes()
                for a, b in zip(jax.tree.leaves(pruned), jax.tree.leaves(loaded)))
    info = export.inspect(root / f"float{s}")
    masked = sum(math.prod(r["shape"]) for r in info if r["kind"] == "sparse")
    mask_bits = 8 * sum(r["mask_bytes"] for r in info)
    rows.append((s, pruned_bytes, out, exact, mask_bits / masked))
  return n, dense, rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--blocks", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=4096)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--compression", default="best", choices=("best", "fast", "none"))
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    n, dense, rows = run(args, Path(tmp))
  mb = lambda b: f"{b / 1e6:7.2f}"
  print(f"{args.dtype}: {n / 1e6:.2f}M params; dense orbax checkpoint {mb(dense).strip()} MB "
        f"(compression={args.compression})")
  print("sparsity | pruned MB | float MB  int8 MB  int4 MB | float/dense int8/dense "
        "int4/dense | float/pruned int8/pruned int4/pruned | mask bit/w (H) | exact | save s "
        "(float/int8/int4)")
  for s, pruned, out, exact, mask_bits in rows:
    (f, tf), (i8, t8), (i4, t4) = out["float"], out["int8"], out["int4"]
    print(f"{100 * s:6.0f}%  | {mb(pruned)}   | {mb(f)} {mb(i8)} {mb(i4)} | "
          f"{100 * f / dense:9.2f}% {100 * i8 / dense:8.2f}% {100 * i4 / dense:8.2f}% | "
          f"{f / pruned:11.3f} {i8 / pruned:11.3f} {i4 / pruned:11.3f} | "
          f"{mask_bits:5.3f} ({entropy(s):5.3f}) | {exact} | {tf:5.2f}/{t8:5.2f}/{t4:5.2f}")


if __name__ == "__main__":
  main()
