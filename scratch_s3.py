import jax, jax.numpy as jnp, numpy as np, jaxprune, equinox as eqx
from flax import nnx
from jaxprune import structure
def check(g, v, fn, x, s=0.5):
  keep = structure.select(g, v, s)
  small, f = structure.prune(g, v, keep=keep)
  ref = fn(jaxprune.apply_masks(v, structure.masks(g, keep)), x)
  out = f(small, x)
  print(jax.tree.map(jnp.shape, small))
  print("err", np.abs(out - ref).max(), np.abs(ref).max())
  return small, f
k = jax.random.split(jax.random.key(0), 8)
# concat
def cat(p, x):
  a = jax.nn.relu(x @ p["a"]); b = jnp.tanh(x @ p["b"])
  return jnp.concatenate([a, b], -1) @ p["c"]
pc = {"a": jax.random.normal(k[0], (3, 6)), "b": jax.random.normal(k[1], (3, 4)), "c": jax.random.normal(k[2], (10, 2))}
x = jax.random.normal(k[3], (5, 3))
g = structure.trace(cat, pc, x); print(g); check(g, pc, cat, x)
# scan over stacked layers + remat + custom_vjp
@jax.custom_vjp
def act(x): return jnp.maximum(x, 0)
act.defvjp(lambda x: (act(x), x), lambda x, g: (g * (x > 0),))
def stacked(p, x):
  h = x @ p["inp"]
  def layer(h, w):
    return h + jax.checkpoint(lambda h: act(h @ w["up"]) @ w["down"])(h), None
  h, _ = jax.lax.scan(layer, h, p["layers"])
  return h @ p["head"]
ps = {"inp": jax.random.normal(k[4], (3, 8)), "layers": {"up": jax.random.normal(k[5], (2, 8, 12)), "down": jax.random.normal(k[6], (2, 12, 8))}, "head": jax.random.normal(k[7], (8, 2))}
g = structure.trace(stacked, ps, x); print(g); small, f = check(g, ps, stacked, x)
print(jax.jit(f)(small, x).shape, jax.grad(lambda p: f(p, x).sum())(small)["inp"].shape)
# eqx
mlp = eqx.nn.MLP(3, 2, 8, 2, key=k[0])
fn, params = structure.from_module(mlp)
g = structure.trace(fn, params, x[0]); print(g); small, f = check(g, params, fn, x[0])
sm = structure.to_module(mlp, small); print(sm(x[0]) - f(small, x[0]))
# nnx
class Net(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(3, 8, rngs=rngs); self.bn = nnx.BatchNorm(8, rngs=rngs, use_running_average=True); self.l2 = nnx.Linear(8, 2, rngs=rngs)
  def __call__(self, x): return self.l2(nnx.relu(self.bn(self.l1(x))))
net = Net(nnx.Rngs(0))
fn, params = structure.from_module(net)
g = structure.trace(fn, params, x); print(g); small, f = check(g, params, fn, x)
sm = structure.to_module(net, small); print(np.abs(sm(x) - f(small, x)).max())
