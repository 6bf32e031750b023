import jax, jax.numpy as jnp, numpy as np, flax.linen as nn, jaxprune
from jaxprune import structure
class Block(nn.Module):
  c: int
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.c, (3,))(x)))
    h = nn.BatchNorm(use_running_average=True)(nn.Conv(self.c, (3,))(h))
    return nn.relu(x + h)
class CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(8, (3,))(x)))
    x = Block(8)(x); x = Block(8)(x)
    x = nn.Conv(6, (3,), feature_group_count=6)(nn.Conv(6, (1,))(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(3)(x)
m = CNN(); x = jax.random.normal(jax.random.key(1), (2, 10, 3))
v = m.init(jax.random.key(0), x)
v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)
v["batch_stats"] = jax.tree.map(jnp.abs, v["batch_stats"])
g = structure.trace(m.apply, v, x)
print(g)
small, f = structure.prune(g, v, 0.5)
keep = structure.select(g, v, 0.5)
ref = m.apply(jaxprune.apply_masks(v, structure.masks(g, keep)), x)
out = f(small, x)
print(jax.tree.map(jnp.shape, small))
print(np.abs(out - ref).max(), np.abs(ref).max())
print(f(small, jnp.ones((5, 10, 3))).shape)
