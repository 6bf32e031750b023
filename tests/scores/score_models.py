"""The small two-layer model shared by the score tests (tests/scores)."""

import jax
import jax.numpy as jnp


def small_mlp(key=jax.random.key(0), dtype=jnp.float32):
  """Params of a 4-5-3 tanh MLP: ``{"l1": {"kernel", "bias"}, "l2": {"kernel"}}``."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {"l1": {"kernel": jax.random.normal(k1, (4, 5), dtype), "bias": 0.1 * jax.random.normal(
      k3, (5,), dtype)}, "l2": {"kernel": jax.random.normal(k2, (5, 3), dtype)}}


def apply_small_mlp(p, x):
  h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
  return h @ p["l2"]["kernel"]
