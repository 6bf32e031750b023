"""The XLA tricks the mask search relies on, each behind one small helper.

Each trick steers what XLA does with memory, ordering or sharding; none changes a value.
``tests/masks/test_xla.py`` pins every one of them on compiled HLO or ``memory_analysis()``,
so that a jax/XLA upgrade that silently undoes one fails a test instead of slowing masks down.

- :func:`after`: runs a computation only once a token is computed. Big computations go into an
  always-true ``lax.cond`` on the token (XLA then runs them one at a time and gives all of them
  one shared temporary buffer: the extra memory is that of the largest leaf, not of all
  leaves); small ones are ordered with ``lax.optimization_barrier``.
- :func:`token_of`: a scalar that depends on a result (a fake data dependency for ``after``).
- :func:`packed_row_counts`: two nested counts of one row in a single float32 row sum.
- :func:`anchored`: a broadcast mask tied elementwise to an array so that sharding propagation
  gives it that array's layout.

>>> import jax.numpy as jnp
>>> a, b = packed_row_counts(jnp.array([[1., 2., 3.]]) >= 2., jnp.array([[1., 2., 3.]]) >= 3.)
>>> a.tolist(), b.tolist()
([2], [1])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BIG = 1 << 20  # arrays of at least this many entries run in an always-true cond (see `after`)
PACK_ROW = 4095  # rows up to this length pack two counts into one float32 row sum


def size(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


def after(token, fn, *operands, big: bool):
  """``fn(*operands)``, computed only after ``token`` (a scalar) is.

  With ``big``, the call sits in ``lax.cond(token >= 0, fn, zeros)`` (tokens are never
  negative, so the branch always runs): XLA cannot start it before ``token`` exists, runs such
  calls one after the other and shares one temporary buffer between them. Otherwise the
  operands pass through ``lax.optimization_barrier`` together with the token, which orders the
  call without a conditional (cheaper to compile and run for small arrays).
  """
  if not big:
    _, operands = lax.optimization_barrier((token, operands))
    return fn(*operands)
  shapes = jax.eval_shape(fn, *operands)
  zeros = lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return lax.cond(token >= 0, fn, zeros, *operands)


def token_of(tree) -> jax.Array:
  """An int32 scalar that XLA can only compute once ``tree`` is computed.

  It is the first entry of the first non-empty leaf, so it is non-negative for counts and
  masks (the only trees it is used on). No ``abs`` on purpose: XLA would fold ``abs(t) >= 0``
  to true and inline the conditionals of :func:`after`, and with them the buffer sharing.
  """
  leaves = [x for x in jax.tree.leaves(tree) if x.size]
  if not leaves:
    return jnp.zeros((), jnp.int32)
  return leaves[0].reshape(-1)[0].astype(jnp.int32)


def packed_row_counts(ge_a, ge_b, count_dtype=jnp.int32):
  """Per row (last axis): ``(#ge_a, #ge_b)`` for nested bool arrays (``ge_b`` implies ``ge_a``).

  One float32 row sum does both: an entry adds 1 if it is only in ``ge_a`` and ``R + 1`` if it
  is in both, with ``R`` above the row length, so the sum ``count_a + R * count_b`` stays below
  2**24 (exact in float32) and splits back. XLA:CPU sums float32 much faster than integers, and
  one pass reads the data once instead of twice. Rows longer than :data:`PACK_ROW` get two sums.
  """
  if ge_a.shape[-1] > PACK_ROW:
    return row_counts(ge_a, count_dtype), row_counts(ge_b, count_dtype)
  radix = PACK_ROW + 1
  rows = jnp.sum(jnp.where(ge_b, float(radix + 1), jnp.where(ge_a, 1.0, 0.0)), axis=-1)
  rows = rows.astype(count_dtype)
  return rows % radix, rows // radix


def row_counts(cond, count_dtype=jnp.int32):
  """Number of True entries per row (last axis), summed in float32 where that is exact."""
  if cond.shape[-1] >= 2**24:
    return jnp.sum(cond, axis=-1, dtype=count_dtype)
  return jnp.sum(cond.astype(jnp.float32), axis=-1).astype(count_dtype)


def anchored(mask, like):
  """``mask`` tied elementwise to ``like`` so that sharding propagation gives it ``like``'s layout.

  A broadcast of a reduced (replicated) vector would otherwise come out replicated, and
  ``with_sharding_constraint`` needs a sharding known when tracing. ``like * 0`` is 0 or NaN,
  never 1, so the comparison is all True; XLA does not fold it away for floats.
  """
  return mask & (like * jnp.zeros((), like.dtype) != jnp.ones((), like.dtype))
