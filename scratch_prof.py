import time, jax, jax.numpy as jnp, sys
sys.path.insert(0, "tests/structure")
import structure_models as sm
from jaxprune import structure
t=time.time(); x = jnp.ones((2, 10, 3)); v = jax.eval_shape(sm.ResCNN().init, jax.random.key(0), x); print("init", time.time()-t)
t=time.time(); g = structure.trace(sm.ResCNN().apply, v, x); print("trace", time.time()-t)
t=time.time(); g = structure.trace(sm.ResCNN().apply, v, x); print("trace2", time.time()-t)
import cProfile, pstats
cProfile.run("structure.trace(sm.ResCNN().apply, v, x)", "/tmp/prof")
pstats.Stats("/tmp/prof").sort_stats("cumtime").print_stats(15)
