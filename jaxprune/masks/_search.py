"""Exact top-k selection by counting search, with no sort and no concatenation of leaves.

The k-th largest score is found by bisection over the order-preserving integer keys of the
floating-point values: every step counts ``scores >= candidate`` (a reduction), summed over
all leaves for a global selection. Ties at the threshold are broken by a second bisection over
the flat index (lower index kept first). NaN scores rank below every number; entries that are
not ``eligible`` (pruned before) are never kept. On sharded arrays every step is a local
comparison plus an all-reduce of a scalar, so masks keep the scores' sharding.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_UINT = {16: np.uint16, 32: np.uint32, 64: np.uint64}


def search_dtype(dtypes) -> np.dtype:
  """The float dtype in which scores of the given dtypes are compared (the widest one)."""
  return np.dtype(jnp.result_type(*[jnp.dtype(d) for d in dtypes]))


def _bits(dtype) -> int:
  return np.dtype(dtype).itemsize * 8


def _key_dtype(dtype):
  """Unsigned dtype for keys and bisection arithmetic (uint32 for 16- and 32-bit floats)."""
  return np.uint64 if _bits(dtype) == 64 else np.uint32


def _key_of(value: float, dtype) -> int:
  """Order-preserving unsigned key of a (static) float value in ``dtype``."""
  bits = int(np.array(value, dtype=dtype).view(_UINT[_bits(dtype)]))
  sign = 1 << (_bits(dtype) - 1)
  return (~bits & (2 * sign - 1)) if bits & sign else bits | sign


def _value_of(key, dtype):
  """Inverse of the key map, on a traced unsigned key."""
  width = _bits(dtype)
  uint = _UINT[width]
  key = key.astype(uint)
  sign = uint(1 << (width - 1))
  bits = jnp.where(key & sign, key & ~sign, ~key)
  return lax.bitcast_convert_type(bits, dtype)


def _flat_index(shape, dtype):
  """Row-major flat index of every entry, built from iotas (sharding-friendly, no reshape)."""
  index = jnp.zeros(shape, dtype)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + lax.broadcasted_iota(dtype, shape, axis) * dtype(stride)
    stride *= shape[axis]
  return index


def _masked(cond, eligible):
  return cond if eligible is None else cond & eligible


def _count(conds, count_dtype):
  return sum(jnp.sum(c, dtype=count_dtype) for c in conds)


def top_k(scores: Sequence[jax.Array], eligible: Sequence[jax.Array | None], k,
          *, count_dtype=jnp.int32) -> list[jax.Array]:
  """Boolean masks keeping exactly ``min(k, #eligible)`` largest scores over all given leaves.

  Args:
    scores: floating arrays (any shapes and float dtypes; compared in the widest dtype).
    eligible: per leaf, ``None`` (all eligible) or a bool array of the same shape.
    k: number of entries to keep in total (int scalar, may be traced).
    count_dtype: integer dtype for counts and indices (int64 needs ``jax_enable_x64``).

  Returns:
    One bool mask per leaf, keeping the top ``k``; ties broken by lower flat index (leaf order
    first, then row-major position), NaN ranked lowest.
  """
  dtype = search_dtype([x.dtype for x in scores])
  xs = [x.astype(dtype) for x in scores]  # fused into each pass; no copy is kept
  k = jnp.asarray(k, count_dtype)
  nan = [_masked(jnp.isnan(x), e) for x, e in zip(xs, eligible)]
  n_valid = _count([_masked(~jnp.isnan(x), e) for x, e in zip(xs, eligible)], count_dtype)
  k_valid = jnp.clip(k, 0, n_valid)
  threshold = _threshold(xs, eligible, k_valid, dtype, count_dtype)
  use_nan = k > n_valid
  greater = [jnp.where(use_nan, _masked(~jnp.isnan(x), e), _masked(x > threshold, e))
             for x, e in zip(xs, eligible)]
  ties = [jnp.where(use_nan, m, _masked(x == threshold, e))
          for x, e, m in zip(xs, eligible, nan)]
  wanted = jnp.maximum(k - _count(greater, count_dtype), 0)  # how many ties to keep
  cut = _tie_cut(ties, wanted, count_dtype)
  masks, offset = [], 0
  for g, t in zip(greater, ties):
    position = _flat_index(t.shape, count_dtype) + count_dtype(offset)
    masks.append(g | (t & (position < cut)))
    offset += int(np.prod(t.shape, dtype=np.int64))
  return masks


def _threshold(xs, eligible, k, dtype, count_dtype):
  """The largest value ``t`` (a float of ``dtype``) with ``count(x >= t) >= k``."""
  key_dtype = _key_dtype(dtype)
  lo = key_dtype(_key_of(-np.inf, dtype))
  hi = key_dtype(_key_of(np.inf, dtype))
  steps = int(np.ceil(np.log2(int(hi) - int(lo) + 1)))

  def step(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo + key_dtype(1)) // key_dtype(2)
    t = _value_of(mid, dtype)
    enough = _count([_masked(x >= t, e) for x, e in zip(xs, eligible)], count_dtype) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - key_dtype(1))

  lo, _ = lax.fori_loop(0, steps, step, (jnp.asarray(lo), jnp.asarray(hi)))
  return _value_of(lo, dtype)


def _tie_cut(ties, wanted, count_dtype):
  """Smallest global flat index ``J`` such that ``wanted`` tied entries lie below ``J``."""
  sizes = [int(np.prod(t.shape, dtype=np.int64)) for t in ties]
  total = sum(sizes)
  n_ties = _count(ties, count_dtype)

  def below(cut):
    conds, offset = [], 0
    for t, size in zip(ties, sizes):
      position = _flat_index(t.shape, count_dtype) + count_dtype(offset)
      conds.append(t & (position < cut))
      offset += size
    return _count(conds, count_dtype)

  def not_done(bounds):
    return bounds[0] < bounds[1]

  def step(bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = below(mid) >= wanted
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  end = jnp.asarray(total, count_dtype)
  start = jnp.where(n_ties <= wanted, end, jnp.asarray(0, count_dtype))
  _, cut = lax.while_loop(not_done, step, (start, end))
  return cut
