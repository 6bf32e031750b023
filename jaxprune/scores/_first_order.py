"""First-order and data-free scores: magnitude, random, gradient, saliency (SNIP)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune.core import at_least_f32 as _float, at_path, check_key, check_same_shape, describe
from jaxprune.core import map_arrays


def magnitude(params):
  """|w|: the classic magnitude score (keeps the params' dtypes).

  >>> import jax.numpy as jnp
  >>> magnitude({"w": jnp.array([-2., 1.])})["w"].tolist()
  [2.0, 1.0]
  """
  return map_arrays(lambda path, w: jnp.abs(w), params)


def random(params, key):
  """Uniform random scores in [0, 1) (float32), an independent stream per leaf.

  Args:
    params: pytree of arrays.
    key: a ``jax.random`` key (or an int seed).

  >>> import jax
  >>> random({"w": jax.numpy.ones((2, 2))}, jax.random.key(0))["w"].shape
  (2, 2)
  """
  key = check_key(key, "jaxprune.scores.random")
  index = iter(range(len(jax.tree.leaves(params))))

  def draw(path, w):
    return jax.random.uniform(jax.random.fold_in(key, next(index)), w.shape, jnp.float32)

  return map_arrays(draw, params)


def gradient(params, grads):
  """|g|: gradient magnitude per entry.

  >>> import jax.numpy as jnp
  >>> gradient({"w": jnp.ones(2)}, {"w": jnp.array([-3., 0.5])})["w"].tolist()
  [3.0, 0.5]
  """
  return map_arrays(lambda path, w, g: jnp.abs(_aligned(path, w, g)), params, grads,
                    names=("grads",))


def saliency(params, grads):
  """|w·g|: first-order Taylor estimate of the loss change when a weight is removed (SNIP).

  >>> import jax.numpy as jnp
  >>> saliency({"w": jnp.array([2., -1.])}, {"w": jnp.array([0.5, 4.])})["w"].tolist()
  [1.0, 4.0]
  """
  return map_arrays(lambda path, w, g: jnp.abs(_float(w) * _aligned(path, w, g)), params,
                    grads, names=("grads",))


def _aligned(path, w, g):
  if g is None or not hasattr(g, "shape"):
    raise TypeError(f"grads at {at_path(path)} must be an array like the params there; got "
                    f"{describe(g)}.")
  check_same_shape(path, w, g, a_name="params", b_name="grads")
  return _float(g)
