"""Bytes on disk of a pruned model: orbax checkpoints vs ``jaxprune.export`` float/int8/int4.

For an MLP-like parameter tree (embedding + blocks of two dense layers + biases, default
~4.2M params), magnitude-pruned layer-wise (``masks.topk``) at 50/80/90/95% sparsity:

  dense        orbax ``StandardCheckpointer`` of the unpruned params (zstd inside tensorstore)
  pruned       the same for the pruned params (zeros stored; zstd squeezes them)
  float        ``export.save(params, masks)``: kept values exact + entropy-coded masks
  int8         ``export.save(..., bits=8)``: per-channel symmetric int8 of the kept weights
  int4         ``export.save(..., bits=4, group_size=128)``: per-group int4, two per byte

each in MB and as a ratio to ``dense`` and to ``pruned``, plus the mask's cost in bits per
masked weight next to its entropy H(s), whether the float export loads back bit-exact, and
the seconds ``export.save`` and ``export.load`` took. A second table takes the int8 file
apart: mask, values, scales and manifest bytes next to the order-0 entropy of the mask
(n H(s)) and of each leaf's kept int8 values, the floor of a coder that sees one symbol at a
time with one table per leaf, and the seconds spent inside the rANS coder. Targets of issue
14 for the default float32 model at 90%: int8 <= 4% of dense and <= 1/3 of pruned; float
<= 0.7x pruned; they are checked at the end.

Usage: python benchmarks/export_size.py [--width 256] [--blocks 4] [--vocab 4096]
       [--dtype float32|bfloat16] [--compression best|fast|none]
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import struct
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

from jaxprune import export, masks, quantize, scores  # noqa: E402
from jaxprune.export import _rans  # noqa: E402

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


def order0_bits(values: np.ndarray) -> float:
  """Bits of the order-0 entropy code of ``values`` (count times entropy, no table)."""
  _, counts = np.unique(values, return_counts=True)
  return float(-(counts * np.log2(counts / counts.sum())).sum())


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


class CoderClock:
  """Seconds spent inside the entropy coder (``_rans.encode_many``, ``_rans.decode_many``)."""

  def __init__(self):
    self.seconds = {"encode_many": 0.0, "decode_many": 0.0}

  def __enter__(self):
    self.saved = {name: getattr(_rans, name) for name in self.seconds}
    for name, fn in self.saved.items():
      def timed_fn(*args, _fn=fn, _name=name, **kwargs):
        out, seconds = timed(lambda: _fn(*args, **kwargs))
        self.seconds[_name] += seconds
        return out
      setattr(_rans, name, timed_fn)
    return self

  def __exit__(self, *exc):
    for name, fn in self.saved.items():
      setattr(_rans, name, fn)


def int8_parts(path) -> dict:
  """Bytes of the int8 file by part, and the order-0 entropy of its mask and values."""
  rows = export.inspect(path)
  q, m = export.load(path, quantized=True)
  floor_mask = floor_values = 0.0
  for x, mask in zip(jax.tree.leaves(q, is_leaf=quantize.is_quantized),
                     jax.tree.leaves(m, is_leaf=lambda v: v is None)):
    if quantize.is_quantized(x) and mask is not None:
      mask = np.asarray(mask)
      floor_mask += mask.size * entropy(float(mask.mean()))
      floor_values += order0_bits(np.asarray(x.values)[mask])
  return {"file": size(path), "mask": sum(r["mask_bytes"] for r in rows),
          "values": sum(r["value_bytes"] for r in rows if r["kind"] == "quantized"),
          "scales": sum(r["scale_bytes"] for r in rows),
          "manifest": 52 + struct.unpack_from("<8sIQ", Path(path).read_bytes())[2],
          "floor_mask": floor_mask / 8, "floor_values": floor_values / 8,
          "kept": sum(int(np.asarray(v).sum()) for v in jax.tree.leaves(m))}


def run(args, root: Path):
  dtype = {"float32": np.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  params = make_params(args.width, args.blocks, args.vocab, dtype)
  n = sum(x.size for x in jax.tree.leaves(params))
  dense = orbax_save(root / "dense", params)
  warm = jax.device_get(masks.topk(scores.magnitude(params), 0.5))
  for opts in ({"bits": 8}, {"bits": 4, "group_size": 128}):  # compile dequantize once
    export.load(export.save(root / "warm", params, warm, force=True, **opts))
  rows = []
  for s in SPARSITIES:
    m = jax.device_get(masks.topk(scores.magnitude(params), s))
    pruned = jax.device_get(masks.apply_masks(params, m))
    pruned_bytes = orbax_save(root / f"pruned{s}", pruned)
    out, exact, coder = {}, False, {}
    for name, opts in (("float", {}), ("int8", {"bits": 8}),
                       ("int4", {"bits": 4, "group_size": 128})):
      with CoderClock() as clock:
        f, save_s = timed(lambda: export.save(root / f"{name}{s}", params, m, force=True,
                                              compression=args.compression, **opts))
        loaded, load_s = timed(lambda: jax.block_until_ready(export.load(f)[0]))
      out[name] = (size(f), save_s, load_s)
      coder[name] = (clock.seconds["encode_many"], clock.seconds["decode_many"])
      if name == "float":
        exact = all(np.asarray(a).tobytes() == np.asarray(b).tobytes()
                    for a, b in zip(jax.tree.leaves(pruned), jax.tree.leaves(loaded)))
    info = export.inspect(root / f"float{s}")
    masked = sum(math.prod(r["shape"]) for r in info if r["kind"] == "sparse")
    mask_bits = 8 * sum(r["mask_bytes"] for r in info)
    rows.append((s, pruned_bytes, out, exact, mask_bits / masked,
                 dict(int8_parts(root / f"int8{s}"), coder=coder)))
  return n, dense, rows


def report(args, n, dense, rows):
  mb = lambda b: f"{b / 1e6:7.2f}"
  kb = lambda b: f"{b / 1e3:6.1f}"
  print(f"{args.dtype}: {n / 1e6:.2f}M params; dense orbax checkpoint {mb(dense).strip()} MB "
        f"(compression={args.compression})")
  print("sparsity | pruned MB | float MB  int8 MB  int4 MB | float/dense int8/dense "
        "int4/dense | float/pruned int8/pruned int4/pruned | mask bit/w (H) | exact | save s "
        "(float/int8/int4) | load s (float/int8/int4)")
  for s, pruned, out, exact, mask_bits, _ in rows:
    (f, sf, lf), (i8, s8, l8), (i4, s4, l4) = out["float"], out["int8"], out["int4"]
    print(f"{100 * s:6.0f}%  | {mb(pruned)}   | {mb(f)} {mb(i8)} {mb(i4)} | "
          f"{100 * f / dense:9.2f}% {100 * i8 / dense:8.2f}% {100 * i4 / dense:8.2f}% | "
          f"{f / pruned:11.3f} {i8 / pruned:11.3f} {i4 / pruned:11.3f} | "
          f"{mask_bits:5.3f} ({entropy(s):5.3f}) | {exact} | {sf:5.2f}/{s8:5.2f}/{s4:5.2f} | "
          f"{lf:5.2f}/{l8:5.2f}/{l4:5.2f}")
  print("\nint8 file by part, KB (floor: order-0 entropy of the mask and of each leaf's kept "
        "values)")
  print("sparsity |   file |  mask (floor)  | values (floor), bits/value | scales | manifest")
  for s, _, _, _, _, p in rows:
    print(f"{100 * s:6.0f}%  | {kb(p['file'])} | {kb(p['mask'])} ({kb(p['floor_mask'])}) | "
          f"{kb(p['values'])} ({kb(p['floor_values'])}), "
          f"{8 * p['values'] / p['kept']:.2f} ({8 * p['floor_values'] / p['kept']:.2f}) | "
          f"{kb(p['scales'])} | {kb(p['manifest'])}")
  print("\nseconds inside the rANS coder (encode in save / decode in load), "
        "float, int8, int4:")
  for s, _, _, _, _, p in rows:
    print(f"{100 * s:6.0f}%  | " + " | ".join(
        f"{name} {e:.2f} / {d:.2f}" for name, (e, d) in p["coder"].items()))
  at90 = {s: (pruned, out) for s, pruned, out, *_ in rows}.get(0.9)
  if at90 and args.dtype == "float32" and (args.width, args.blocks, args.vocab) == (256, 4,
                                                                                      4096):
    pruned, out = at90
    checks = [("int8 <= 4% of dense orbax", out["int8"][0] / dense, 0.04),
              ("int8 <= 1/3 of pruned orbax", out["int8"][0] / pruned, 1 / 3),
              ("float <= 0.7x pruned orbax", out["float"][0] / pruned, 0.7)]
    print("\ntargets of issue 14 at 90%: " + "; ".join(
        f"{name}: {value:.4f} {'met' if value <= limit else 'NOT MET'}"
        for name, value, limit in checks))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--blocks", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=4096)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--compression", default="best", choices=("best", "fast", "none"))
  args = parser.parse_args()
  start = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    n, dense, rows = run(args, Path(tmp))
  report(args, n, dense, rows)
  print(f"\njax {jax.__version__}, numpy {np.__version__}, orbax-checkpoint "
        f"{getattr(ocp, '__version__', '?')}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; load average {start[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
  main()
