"""Speed, passes, compile time and memory of jaxprune's counting-search masks, in one run.

Prints two tables:
  1. one f32 leaf of n entries at sparsity 0.9, with and without a forced tie at the threshold
     (the k-th and (k+1)-th largest scores made equal): ``masks.topk`` next to an
     ``argsort``-based top-k and one read of the data (``jnp.sum``, the physical limit), as
     times and as multiples of that read; plus the search's counting passes (debug counter);
  2. a GPT-2-small-like tree (124M params) with the scores computed inside the jit
     (``global_topk(magnitude(params))``): run time with and without a forced tie, compile
     time (``jit(...).lower(...).compile()``) and XLA temporaries as a fraction of the params.

Usage: python benchmarks/masks.py [--sizes 1e6,1e7] [--sort-max 1e7] [--repeats 3]
       [--skip-gpt2] [--gpt2-layers 12]
Timings are medians of ``--repeats`` runs after one warm-up; the rows of a table are measured
in the same run, so ratios are comparable even on a loaded machine (the 1-minute load average
is printed).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from jaxprune import masks
from jaxprune.masks import _search

SPARSITY = 0.9


def sort_topk(x, sparsity):
  """Reference: argsort-based top-k of one array."""
  n = x.size
  k = n - jnp.round(sparsity * n).astype(jnp.int32)
  order = jnp.argsort(-x.ravel())
  return jnp.zeros(n, bool).at[order].set(jnp.arange(n) < k).reshape(x.shape)


def timed(compiled, *args, repeats):
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def compiled_with_time(fn, *args):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def forced_tie(x, k):
  """``x`` with its (k+1)-th largest entry set equal to the k-th (k counted from 1)."""
  flat = jnp.sort(x.ravel())[::-1]
  return jnp.where(x == flat[k], flat[k - 1], x)


def table(rows, header):
  widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
  fmt = "  ".join("{:>%d}" % w for w in widths)
  print(fmt.format(*header))
  for r in rows:
    print(fmt.format(*r))


def per_leaf(sizes, sort_max, repeats):
  rows = []
  for n in sizes:
    x = jnp.abs(jax.random.normal(jax.random.key(0), (n // 1000, 1000)))
    k = n - int(round(SPARSITY * n))
    read, _ = compiled_with_time(jnp.sum, x)
    ours, t_compile = compiled_with_time(lambda s: masks.topk({"w": s}, SPARSITY)["w"], x)
    sort = compiled_with_time(sort_topk, x, SPARSITY)[0] if n <= sort_max else None
    for tie, data in (("no", x), ("yes", forced_tie(x, k))):
      t_read = timed(read, data, repeats=repeats)
      t_ours = timed(ours, data, repeats=repeats)
      passes = int(_search.search_stats([data], [None], k)["passes"])
      if sort is not None:
        t_sort = timed(sort, data, SPARSITY, repeats=max(1, repeats // 2))
        sort_cells = (f"{t_sort * 1e3:.1f}", f"{t_sort / t_read:.0f}", f"{t_sort / t_ours:.1f}x")
      else:
        sort_cells = ("skipped", "-", "-")
      rows.append((f"{n:.0e}", tie, f"{t_read * 1e3:.1f}", f"{t_ours * 1e3:.1f}",
                   f"{t_ours / t_read:.0f}", str(passes)) + sort_cells + (f"{t_compile:.1f}",))
  print(f"\nPer-leaf top-k at sparsity {SPARSITY} (one f32 leaf, {jax.devices()[0].platform})")
  table(rows, ("entries", "tie", "sum ms", "topk ms", "topk/sum", "passes", "argsort ms",
               "argsort/sum", "topk speed-up", "topk compile s"))


def gpt2_small_shapes(layers=12):
  """Matrix shapes of GPT-2 small (124M params; biases and norms included as 1-D leaves)."""
  d, vocab, ctx = 768, 50257, 1024
  tree = {"wte": (vocab, d), "wpe": (ctx, d), "ln_f": {"scale": (d,), "bias": (d,)}}
  for i in range(layers):
    tree[f"h{i}"] = {
        "attn": {"c_attn": (d, 3 * d), "c_attn_b": (3 * d,), "c_proj": (d, d), "c_proj_b": (d,)},
        "mlp": {"c_fc": (d, 4 * d), "c_fc_b": (4 * d,), "c_proj": (4 * d, d), "c_proj_b": (d,)},
        "ln_1": (d,), "ln_2": (d,),
    }
  return tree


def random_tree(shapes, key):
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([jax.random.normal(k, s) for k, s in zip(keys, leaves)])


def global_gpt2(repeats, layers):
  params = random_tree(gpt2_small_shapes(layers), jax.random.key(1))
  n = sum(x.size for x in jax.tree.leaves(params))
  selected = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
  n_sel = sum(x.size for x in selected)
  k = n_sel - int(round(SPARSITY * n_sel))
  # A forced tie at the global threshold: the (k+1)-th largest |w| made equal to the k-th.
  flat = jnp.sort(jnp.concatenate([jnp.abs(x).ravel() for x in selected]))[::-1]
  kth, next_ = flat[k - 1], flat[k]
  del flat
  tied = jax.tree.map(lambda x: jnp.where(jnp.abs(x) == next_, kth, x) if x.ndim >= 2 else x,
                      params)
  read, _ = compiled_with_time(lambda p: sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(p)),
                               params)
  rows = []
  for name, fn in (("global_topk(magnitude)", lambda p: masks.global_topk(
      jaxprune.scores.magnitude(p), SPARSITY)),
                   ("topk(magnitude) per leaf", lambda p: masks.topk(
                       jaxprune.scores.magnitude(p), SPARSITY))):
    compiled, t_compile = compiled_with_time(fn, params)
    mem = compiled.memory_analysis()
    temp = mem.temp_size_in_bytes / (4 * n) if mem is not None else float("nan")
    for tie, data in (("no", params), ("yes", tied)):
      t_read = timed(read, data, repeats=repeats)
      t = timed(compiled, data, repeats=repeats)
      rows.append((name, tie, f"{t_read:.3f}", f"{t:.2f}", f"{t / t_read:.0f}",
                   f"{t_compile:.1f}", f"{temp:.2f}"))
  print(f"\nGPT-2-small-like tree ({layers} layers): {n / 1e6:.1f}M params "
        f"({n_sel / 1e6:.1f}M in matrices), sparsity {SPARSITY}, scores computed in the jit")
  table(rows, ("method", "tie", "sum(|w|) s", "seconds", "x sum", "compile s",
               "temp/params"))
  print("(temp: XLA temporaries beyond inputs and outputs; the bool masks add 0.25x)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="1e6,1e7")
  parser.add_argument("--sort-max", type=float, default=1e7)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip-gpt2", action="store_true")
  parser.add_argument("--gpt2-layers", type=int, default=12)
  args = parser.parse_args()
  print(f"load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  per_leaf([int(float(s)) for s in args.sizes.split(",")], args.sort_max, args.repeats)
  if not args.skip_gpt2:
    global_gpt2(args.repeats, args.gpt2_layers)
  print(f"load average (1 min) at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
