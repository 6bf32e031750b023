"""Small models shared by the structure tests (tests/structure)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxprune
from jaxprune import structure


def normal(seed, *shape, scale=1.0):
  """A float32 jax array of standard normals from numpy (no XLA compile)."""
  rng = np.random.default_rng(seed)
  return jnp.asarray((scale * rng.standard_normal(shape)).astype(np.float32))


def mlp_params(key=0):
  return {"w1": normal(key, 3, 8), "b1": normal(key + 1, 8), "w2": normal(key + 2, 8, 2),
          "b2": normal(key + 3, 2)}


def mlp(p, x):
  return jax.nn.sigmoid(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def concat_params(key=0):
  return {"a": normal(key, 3, 6), "b": normal(key + 1, 3, 4), "c": normal(key + 2, 10, 2)}


def concat(p, x):
  return jnp.concatenate([jax.nn.relu(x @ p["a"]), jnp.tanh(x @ p["b"])], -1) @ p["c"]


def heads_params(key=0, d=16):
  return {"qkv": normal(key, d, 3 * d, scale=0.25), "out": normal(key + 1, d, d, scale=0.25)}


def heads(p, x, num_heads=4):
  """Self-attention with a fused qkv projection, split into heads by reshape."""
  b, t, _ = x.shape
  q, k, v = jnp.split(x @ p["qkv"], 3, axis=-1)
  sh = lambda z: z.reshape(b, t, num_heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
  q, k, v = sh(q), sh(k), sh(v)
  a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]), -1)
  return x + (a @ v).transpose(0, 2, 1, 3).reshape(b, t, -1) @ p["out"]


class Block(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.width, (3,))(x)))
    h = nn.BatchNorm(use_running_average=True)(nn.Conv(self.width, (3,))(h))
    return nn.relu(x + h)


class ResCNN(nn.Module):
  """Conv-BN stem, two residual blocks, a depthwise conv and a flatten + Dense head."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(8, (3,), name="stem")(x)))
    x = Block(8, name="block0")(x)
    x = Block(8, name="block1")(x)
    x = nn.Conv(6, (1,), name="pointwise")(x)
    x = nn.Conv(6, (3,), feature_group_count=6, name="depthwise")(x)
    return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


class Transformer(nn.Module):
  """A pre-norm transformer block: multi-head attention and an MLP, both residual."""
  width: int = 16
  num_heads: int = 4

  @nn.compact
  def __call__(self, tokens):
    x = nn.Dense(self.width, name="embed")(tokens)
    y = nn.LayerNorm(name="ln0")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn")(y, y)
    y = nn.LayerNorm(name="ln1")(x)
    x = x + nn.Dense(self.width, name="down")(nn.gelu(nn.Dense(4 * self.width, name="up")(y)))
    return nn.Dense(3, name="head")(x)


def noisy(variables, key=5):
  """Perturbs every leaf (so no channel ties) and makes BatchNorm variances positive."""
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  leaves = [np.asarray(x) + normal(key + i, *x.shape, scale=0.3) for i, x in enumerate(leaves)]
  out = treedef.unflatten(leaves)
  if "batch_stats" in out:
    out = dict(out)
    out["batch_stats"] = jax.tree.map(lambda v: jnp.abs(v) + 0.5, out["batch_stats"])
  return out


def init(module, *args):
  """Module variables with values: zeros of the right shapes, then noise (no eager init)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  return noisy(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes))


def zeroed_reference(graph, params, fn, *args, sparsity=0.5, scores="l2"):
  """(keep, small output, dense-with-removed-entries-zeroed output)."""
  keep = structure.select(graph, params, sparsity, scores=scores)
  small, small_fn = structure.prune(graph, params, keep=keep)
  dense = fn(jaxprune.apply_masks(params, structure.masks(graph, keep)), *args)
  return keep, small, small_fn, dense
