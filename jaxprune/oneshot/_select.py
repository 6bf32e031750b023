"""Exact selections inside one kernel: the ``keep`` best entries of every row, or of ``m``.

The one-shot methods compare scores within small fixed groups (a row of a column block, the
inputs of one output unit, ``m`` consecutive inputs), many groups at a time. A sort per group
is slow on XLA:CPU (an argsort of one 3072 x 768 kernel along its inputs takes seconds), so
:func:`top_per_row` finds every row's threshold at once by a bisection over the order-preserving
integer keys of the scores (32 counting passes over the kernel, all rows in parallel) and
places tied entries by one cumulative sum. Ties keep the lower index; NaN ranks lowest.

>>> import jax.numpy as jnp
>>> top_per_row(jnp.array([[3., 1., 2.], [0., 5., 5.]]), 2).tolist()
[[True, False, True], [False, True, True]]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def float_keys(score) -> jax.Array:
  """uint32 keys with the order of the float32 values (NaN below -inf, -0.0 below +0.0)."""
  x = jnp.asarray(score, jnp.float32)
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  sign = jnp.uint32(1 << 31)
  key = jnp.where(bits & sign, ~bits, bits | sign)
  return jnp.where(jnp.isnan(x), jnp.uint32(0), key)


@jax.jit
def top_per_row(score, keep) -> jax.Array:
  """Bool mask keeping the ``keep`` largest entries of every row (last axis) of ``score``.

  Args:
    score: floating array ``(..., length)``.
    keep: entries kept per row, a Python int or a traced int scalar (clipped to
      ``[0, length]``).

  Returns:
    ``bool`` array of ``score.shape`` with exactly ``clip(keep, 0, length)`` True per row;
    ties keep the lower index, NaN ranks lowest.
  """
  key = float_keys(score)
  length = key.shape[-1]
  keep = jnp.clip(jnp.asarray(keep, jnp.int32), 0, length)

  def bit(i, prefix):  # the largest key t with count(key >= t) >= keep, one bit at a time
    candidate = prefix | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    count = jnp.sum(key >= candidate[..., None], axis=-1, dtype=jnp.int32)
    return jnp.where(count >= keep, candidate, prefix)

  threshold = lax.fori_loop(0, 32, bit, jnp.zeros(key.shape[:-1], jnp.uint32))[..., None]
  above = key > threshold
  tied = key == threshold
  need = keep - jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)
  rank = jnp.cumsum(tied, axis=-1, dtype=jnp.int32)
  return (above | (tied & (rank <= need))) & (keep > 0)


def top_flat(score, keep) -> jax.Array:
  """Keeps the ``keep`` largest entries of the whole array; ties to the lower row-major index."""
  return top_per_row(score.reshape(1, -1), keep).reshape(score.shape)


def top_per_column(score, keep) -> jax.Array:
  """Keeps the ``keep`` largest entries of every column of a 2-D ``(in, out)`` score."""
  return top_per_row(score.T, keep).T


@functools.partial(jax.jit, static_argnames=("n",))
def n_best_of_m(score, n: int) -> jax.Array:
  """Keeps the ``n`` largest of the ``m`` entries along axis 0 of ``score`` ``(m, ...)``.

  Pairwise ranks (``m`` is small: N:M groups): entry ``i`` is kept when fewer than ``n``
  entries beat it; ties keep the lower index, NaN ranks lowest.
  """
  key = float_keys(score)
  m = key.shape[0]
  earlier = np.arange(m)[:, None] > np.arange(m)[None, :]  # [i, j]: j comes before i
  earlier = earlier.reshape((m, m) + (1,) * (key.ndim - 1))
  beats = (key[None, :] > key[:, None]) | ((key[None, :] == key[:, None]) & earlier)
  return jnp.sum(beats, axis=1, dtype=jnp.int32) < n
