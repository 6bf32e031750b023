import time, jax, jax.numpy as jnp, sys
sys.path.insert(0, "tests/structure")
import structure_models as sm
from jaxprune import structure
import jaxprune
x = sm.normal(6, 2, 5, 7); m = sm.Transformer()
t=time.time(); v = sm.init(m, x); print("init", time.time()-t)
t=time.time(); g = structure.trace(m.apply, v, x); print("trace", time.time()-t)
t=time.time(); keep = structure.select(g, v, 0.5); print("select", time.time()-t)
t=time.time(); small, f = structure.prune(g, v, keep=keep); print("prune", time.time()-t)
t=time.time(); mk = structure.masks(g, keep); d = jaxprune.apply_masks(v, mk); print("masks", time.time()-t)
t=time.time(); r = jax.jit(m.apply)(d, x).block_until_ready(); print("dense", time.time()-t)
t=time.time(); o = jax.jit(f)(small, x).block_until_ready(); print("small", time.time()-t)
