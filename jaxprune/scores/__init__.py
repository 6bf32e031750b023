"""Scores over a parameter pytree: higher = more important = kept.

Every score returns a pytree shaped like ``params`` (``None`` for non-array leaves) and works
eagerly, under ``jax.jit`` and on sharded params.

>>> import jax.numpy as jnp, jaxprune
>>> jaxprune.scores.saliency({"w": jnp.array([1., -2.])}, {"w": jnp.array([3., 1.])})["w"]
Array([3., 2.], dtype=float32)
"""

from jaxprune.scores._first_order import gradient, magnitude, random, saliency

__all__ = [
    "gradient",
    "magnitude",
    "random",
    "saliency",
]
