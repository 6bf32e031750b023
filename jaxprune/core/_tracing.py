"""Is a value known now, or being traced? The one place jaxprune asks jax this."""

from __future__ import annotations

import jax
from jax import core as jax_core


def is_tracer(x) -> bool:
  """True for a value being traced (under ``jit``, ``grad``, ``vmap``, ...): no value yet.

  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import core
  >>> core.is_tracer(jnp.ones(2)), jax.jit(lambda x: core.is_tracer(x) * x)(1.0)
  (False, Array(1., dtype=float32, weak_type=True))
  """
  return isinstance(x, jax_core.Tracer)


def is_concrete_array(x) -> bool:
  """True for a ``jax.Array`` with a value (not a tracer): one that can be read on the host.

  >>> import jax.numpy as jnp, numpy as np
  >>> from jaxprune import core
  >>> core.is_concrete_array(jnp.ones(2)), core.is_concrete_array(np.ones(2))
  (True, False)
  """
  return isinstance(x, jax.Array) and not is_tracer(x)
