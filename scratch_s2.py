import jax, jax.numpy as jnp, numpy as np, flax.linen as nn, jaxprune, time
from jaxprune import structure
class Blk(nn.Module):
  d: int = 16; h: int = 4
  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.h)(y, y)
    y = nn.LayerNorm()(x)
    return x + nn.Dense(self.d)(nn.gelu(nn.Dense(4 * self.d)(y)))
m = Blk(); x = jax.random.normal(jax.random.key(1), (2, 5, 16))
v = m.init(jax.random.key(0), x)
g = structure.trace(m.apply, v, x)
print(g)
def check(g, v, fn, x, s=0.5):
  keep = structure.select(g, v, s)
  small, f = structure.prune(g, v, keep=keep)
  ref = fn(jaxprune.apply_masks(v, structure.masks(g, keep)), x)
  out = f(small, x)
  print(jax.tree.map(jnp.shape, small))
  print("err", np.abs(out - ref).max(), np.abs(ref).max())
check(g, v, m.apply, x)
# reshape-based attention, fused qkv + split
def attn(p, x):
  B, T, D = x.shape; H = 4
  qkv = x @ p["qkv"]
  q, k, v = jnp.split(qkv, 3, axis=-1)
  sh = lambda t: t.reshape(B, T, H, -1).transpose(0, 2, 1, 3)
  q, k, v = sh(q), sh(k), sh(v)
  a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]), -1)
  o = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, -1)
  return x + o @ p["out"]
pa = {"qkv": jax.random.normal(jax.random.key(3), (16, 48)), "out": jax.random.normal(jax.random.key(4), (16, 16))}
g = structure.trace(attn, pa, x); print(g)
check(g, pa, attn, x)
