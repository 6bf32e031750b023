"""Bytes on disk of a pruned model: dense orbax checkpoint vs ``jaxprune.export``.

For an MLP-like parameter tree (embedding + blocks of two dense layers + biases, default
~4.2M params), magnitude-pruned layer-wise (``masks.topk``) at 50/80/90/95/99% sparsity, prints
per dtype (float32 and bfloat16):

  dense       ``checkpoint.save`` of the unpruned params (orbax, zstd)
  pruned      ``checkpoint.save`` of the pruned params, zeros stored (orbax's zstd squeezes them)
  export      ``export.save(params, masks)``: bit-packed masks + kept values (orbax, zstd)
  ideal       in-memory size of the compressed tree (``export.nbytes``: n/8 + k*itemsize)
  bcoo        what a COO layout would need (k values + k int32 index pairs), for comparison

and the ratios export/dense and export/pruned, plus save/load wall times (host, incl. hashing).
A last table gives the in-memory size of the 2:4 N:M layout (``export.compress_n_of_m``).

Usage: python benchmarks/export_size.py [--width 256] [--blocks 4] [--vocab 4096]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import checkpoint, export, masks, scores

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)


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


def dir_bytes(path) -> int:
  return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def run(dtype, args, root: Path):
  params = make_params(args.width, args.blocks, args.vocab, dtype)
  n = sum(x.size for x in jax.tree.leaves(params))
  itemsize = np.dtype(dtype).itemsize
  checkpoint.save(root / "dense", params, force=True)
  dense = dir_bytes(root / "dense")
  rows = []
  for s in SPARSITIES:
    m = jax.device_get(masks.topk(scores.magnitude(params), s))
    pruned = jax.device_get(masks.apply_masks(params, m))
    checkpoint.save(root / "pruned", pruned, force=True)
    _, t_save = timed(lambda: export.save(root / "export", params, m, force=True))
    (p2, m2), t_load = timed(lambda: export.load(root / "export"))
    same = all(np.asarray(a).tobytes() == np.asarray(b).tobytes()
               for a, b in zip(jax.tree.leaves(pruned), jax.tree.leaves(p2)))
    kept = sum(int(x.sum()) for x in jax.tree.leaves(m))
    masked_n = sum(x.size for x in jax.tree.leaves(m))
    ideal = export.nbytes(export.compress(params, m))
    bcoo = (n - masked_n) * itemsize + kept * (itemsize + 2 * 4)
    rows.append((s, dense, dir_bytes(root / "pruned"), dir_bytes(root / "export"), ideal, bcoo,
                 t_save, t_load, same))
  return n, rows


def mb(x: int) -> str:
  return f"{x / 1e6:8.2f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--blocks", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=4096)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    for dtype, name in ((np.float32, "float32"), (jnp.bfloat16, "bfloat16")):
      n, rows = run(dtype, args, Path(tmp))
      print(f"\n{name}: {n / 1e6:.2f}M params, raw {mb(n * np.dtype(dtype).itemsize).strip()} MB"
            " (sizes in MB on disk unless noted)")
      print("sparsity    dense   pruned   export  ideal(mem)  bcoo(mem)  export/dense  "
            "export/pruned  save_s  load_s  exact")
      for s, dense, pruned, exp, ideal, bcoo, ts, tl, same in rows:
        print(f"{100 * s:7.0f}% {mb(dense)} {mb(pruned)} {mb(exp)}    {mb(ideal)}   {mb(bcoo)}"
              f"       {100 * exp / dense:6.2f}%        {100 * exp / pruned:6.2f}%  {ts:6.2f}"
              f"  {tl:6.2f}  {same}")
  print("\n2:4 N:M layout (in memory, one 2048x2048 leaf): values + 2-bit indices vs bitmask")
  print("dtype      dense MB  n:m MB  bitmask MB  n:m/dense")
  for dtype, name in ((np.float32, "float32"), (jnp.bfloat16, "bfloat16")):
    w = np.random.default_rng(1).standard_normal((2048, 2048)).astype(dtype)
    m = np.asarray(masks.n_of_m({"w": jnp.abs(jnp.asarray(w, jnp.float32))}, 2, 4)["w"])
    leaf = export.compress_n_of_m(w, m, 2, 4)
    nm = leaf.values.nbytes + leaf.indices.nbytes
    packed = export.nbytes(export.compress({"w": w}, {"w": m}))
    print(f"{name:9s} {mb(w.nbytes)} {mb(nm)}    {mb(packed)}     {100 * nm / w.nbytes:6.2f}%")


if __name__ == "__main__":
  main()
