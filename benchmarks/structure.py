"""Structured pruning: smaller dense models, measured side by side with the dense ones.

Prints two tables:
  1. an MLP and a CNN (MNIST-1D shapes): params, FLOPs from XLA ``cost_analysis()`` and median
     CPU latency of the dense model and of ``structure.prune`` at 30/50/70% of the channels
     removed, at batch 1 and 256 (all measured in one run, so the ratios are comparable);
  2. the time ``structure.trace`` + ``structure.prune`` take on a GPT-2-small-shaped
     transformer (124M params; heads and MLP neurons cut, the residual width is not prunable
     because LayerNorm statistics run over it).

Usage: python benchmarks/structure.py [--repeats 30] [--skip-gpt2]
Timings are medians of ``--repeats`` calls after one warm-up (compile excluded), dense and
small models called in alternation round by round so that they see the same machine load.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from jaxprune import structure  # noqa: E402


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = nn.relu(nn.Dense(1024, name=f"dense{i}")(x))
    return nn.Dense(10, name="head")(x)


class CNN(nn.Module):
  """MNIST-1D-shaped 1-D CNN: three conv layers of 128 channels, flatten, dense head."""

  @nn.compact
  def __call__(self, x):
    x = x[..., None]
    for i in range(3):
      x = nn.relu(nn.Conv(128, (5,), strides=(2,), name=f"conv{i}")(x))
    return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _compile(fn, params, x):
  compiled = jax.jit(fn).lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  jax.block_until_ready(compiled(params, x))  # warm-up
  return compiled, float(cost.get("flops", float("nan")))


def _interleaved(calls, repeats):
  """Median seconds of each call, the calls alternating round by round (same load for all)."""
  times = [[] for _ in calls]
  for _ in range(repeats):
    for k, call in enumerate(calls):
      t = time.perf_counter()
      jax.block_until_ready(call())
      times[k].append(time.perf_counter() - t)
  return [float(np.median(ts)) for ts in times]


def small_models(repeats):
  rows = []
  for name, model, features in (("mlp", MLP(), 40), ("cnn", CNN(), 40)):
    x1 = jnp.ones((1, features))
    params = jax.jit(model.init)(jax.random.key(0), x1)
    graph = structure.trace(model.apply, params, x1)
    variants = [("dense", params, model.apply)]
    for s in (0.3, 0.5, 0.7):
      small, fn = structure.prune(graph, params, s)
      variants.append((f"{int(s * 100)}%", small, fn))
    for batch in (1, 256):
      x = jax.random.normal(jax.random.key(1), (batch, features))
      compiled = [_compile(fn, p, x) for _, p, fn in variants]
      times = _interleaved([lambda c=c, p=p: c[0](p, x) for c, (_, p, _) in
                            zip(compiled, variants)], repeats)
      for (label, p, _), (_, flops), t in zip(variants, compiled, times):
        rows.append((name, batch, label, _count(p), flops, compiled[0][1] / flops, t * 1e3,
                     times[0] / t))
  print("cut = fraction of the channels of every prunable group removed (L2 scores)")
  print(f"{'model':5} {'batch':>5} {'cut':>5} {'params':>9} {'FLOPs':>11} {'fewer':>6} "
        f"{'ms':>8} {'speed-up':>8}")
  for r in rows:
    print(f"{r[0]:5} {r[1]:5d} {r[2]:>5} {r[3]:9d} {r[4]:11.3g} {r[5]:5.2f}x {r[6]:8.3f} "
          f"{r[7]:7.2f}x")


class GPTBlock(nn.Module):
  width: int
  heads: int

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y, mask=nn.make_causal_mask(
        jnp.ones(x.shape[:2])))
    y = nn.LayerNorm()(x)
    return x + nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(y)))


class GPT2(nn.Module):
  """GPT-2 small shapes: 50257 tokens, 1024 positions, 12 layers of width 768, 12 heads."""
  vocab: int = 50257
  width: int = 768
  layers: int = 12
  heads: int = 12

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(self.vocab, self.width)
    x = embed(tokens) + self.param("pos", nn.initializers.normal(0.02),
                                   (1024, self.width))[:tokens.shape[1]]
    for i in range(self.layers):
      x = GPTBlock(self.width, self.heads, name=f"h{i}")(x)
    return embed.attend(nn.LayerNorm()(x))


def gpt2():
  model = GPT2()
  tokens = jnp.zeros((1, 64), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), tokens)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.02),
                        shapes)
  n = _count(params)
  t0 = time.perf_counter()
  graph = structure.trace(model.apply, params, tokens)
  t1 = time.perf_counter()
  small, _ = structure.prune(graph, params, 0.5)
  jax.block_until_ready(small)
  t2 = time.perf_counter()
  print(f"GPT-2-small-shaped transformer: {n / 1e6:.1f}M params, {len(graph)} groups "
        f"({len(graph.prunable)} prunable); trace {t1 - t0:.1f} s, prune 50% (L2 scores, "
        f"slicing) {t2 - t1:.1f} s, total {t2 - t0:.1f} s; {_count(small) / 1e6:.1f}M params "
        "after")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--skip-gpt2", action="store_true")
  args = parser.parse_args()
  small_models(args.repeats)
  if not args.skip_gpt2:
    gpt2()


if __name__ == "__main__":
  main()
