"""Speed and memory of jaxprune's counting-search masks against a sort-based top-k.

Prints two tables:
  1. one leaf of n elements: ``masks.topk`` vs an ``argsort``-based top-k (time, speed-up,
     XLA temp + output bytes as a fraction of the scores' bytes);
  2. a GPT-2-small-like parameter tree (~124M params): ``masks.global_topk`` vs concatenation +
     sort.

Usage: python benchmarks/masks.py [--sizes 1e5,1e6,1e7,5e7] [--sort-max 1e7] [--repeats 3]
Timings are medians of ``--repeats`` runs after one warm-up (compile excluded).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import masks

SPARSITY = 0.9


def sort_topk(scores, sparsity):
  """Reference: argsort-based per-leaf top-k (what a straightforward implementation does)."""
  def one(x):
    n = x.size
    k = n - jnp.round(sparsity * n).astype(jnp.int32)
    order = jnp.argsort(-x.ravel())
    keep = jnp.zeros(n, bool).at[order].set(jnp.arange(n) < k)
    return keep.reshape(x.shape)
  return jax.tree.map(one, scores)


def sort_global(scores, sparsity):
  """Reference: concatenate every leaf, argsort once, split back."""
  leaves, treedef = jax.tree.flatten(scores)
  flat = jnp.concatenate([x.ravel() for x in leaves])
  n = flat.size
  k = n - jnp.round(sparsity * n).astype(jnp.int32)
  keep = jnp.zeros(n, bool).at[jnp.argsort(-flat)].set(jnp.arange(n) < k)
  out, start = [], 0
  for x in leaves:
    out.append(keep[start:start + x.size].reshape(x.shape))
    start += x.size
  return treedef.unflatten(out)


def measure(fn, tree, repeats):
  """(median seconds, XLA temporary bytes) of a jitted ``fn(tree, SPARSITY)``.

  The temporary bytes exclude the inputs and the outputs (the bool masks, 1 byte per entry,
  i.e. 0.25x float32 params).
  """
  jitted = jax.jit(fn)
  compiled = jitted.lower(tree, SPARSITY).compile()
  mem = compiled.memory_analysis()
  extra = mem.temp_size_in_bytes if mem is not None else float("nan")  # outputs not included
  jax.block_until_ready(compiled(tree, SPARSITY))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(tree, SPARSITY))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), extra


def gpt2_small_shapes():
  """Matrix shapes of GPT-2 small (124M params; biases and norms included as 1-D leaves)."""
  d, vocab, ctx, layers = 768, 50257, 1024, 12
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
  return treedef.unflatten([jnp.abs(jax.random.normal(k, s)) for k, s in zip(keys, leaves)])


def table(rows, header):
  widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
  fmt = "  ".join("{:>%d}" % w for w in widths)
  print(fmt.format(*header))
  for r in rows:
    print(fmt.format(*r))


def per_leaf(sizes, sort_max, repeats):
  rows = []
  for n in sizes:
    x = {"w": jnp.abs(jax.random.normal(jax.random.key(0), (n // 1000, 1000)))}
    t_ours, m_ours = measure(masks.topk, x, repeats)
    if n <= sort_max:
      t_sort, m_sort = measure(sort_topk, x, max(1, repeats // 2))
      speed, sort_cell, msort = f"{t_sort / t_ours:.1f}x", f"{t_sort * 1e3:.1f}", f"{m_sort / (4 * n):.2f}"
    else:
      speed, sort_cell, msort = "-", "skipped", "-"
    rows.append((f"{n:.0e}", f"{t_ours * 1e3:.1f}", sort_cell, speed, f"{m_ours / (4 * n):.2f}",
                 msort))
  print(f"\nPer-leaf top-k at sparsity {SPARSITY} (one f32 leaf, {jax.devices()[0].platform})")
  table(rows, ("elements", "topk ms", "argsort ms", "speed-up", "topk temp/params",
               "argsort temp/params"))


def global_gpt2(repeats, with_sort):
  tree = random_tree(gpt2_small_shapes(), jax.random.key(1))
  n = sum(x.size for x in jax.tree.leaves(tree))
  selected = sum(x.size for x in jax.tree.leaves(tree) if x.ndim >= 2)
  rows = []
  t, m = measure(masks.global_topk, tree, repeats)
  rows.append(("global_topk (ours)", f"{t:.2f}", f"{m / (4 * n):.2f}"))
  t, m = measure(masks.topk, tree, repeats)
  rows.append(("topk per leaf (ours)", f"{t:.2f}", f"{m / (4 * n):.2f}"))
  if with_sort:
    matrices = jax.tree.map(lambda x: x if x.ndim >= 2 else None, tree)
    t, m = measure(sort_global, matrices, 1)
    rows.append(("concatenate + argsort", f"{t:.2f}", f"{m / (4 * n):.2f}"))
  print(f"\nGPT-2-small-like tree: {n / 1e6:.1f}M params ({selected / 1e6:.1f}M in matrices), "
        f"sparsity {SPARSITY}")
  table(rows, ("method", "seconds", "temp mem/params"))
  print("(temp: XLA temporaries beyond inputs and outputs; the bool masks add 0.25x)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="1e5,1e6,1e7,5e7")
  parser.add_argument("--sort-max", type=float, default=1e7)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip-gpt2", action="store_true")
  parser.add_argument("--gpt2-sort", action="store_true", help="also time the sort (slow)")
  args = parser.parse_args()
  sizes = [int(float(s)) for s in args.sizes.split(",")]
  per_leaf(sizes, args.sort_max, args.repeats)
  if not args.skip_gpt2:
    global_gpt2(args.repeats, args.gpt2_sort)


if __name__ == "__main__":
  main()
