"""Exact top-k selection by counting search, with no sort and no concatenation of leaves.

The k-th largest score is found by bisection over the order-preserving integer keys of the
floating-point values: every step counts ``scores >= candidate`` (a reduction), summed over
all leaves for a global selection. Ties at the threshold are broken by a second bisection over
the flat index (lower index kept first). NaN scores rank below every number; entries that are
not ``eligible`` (pruned before) are never kept. On sharded arrays every step is a local
comparison plus an all-reduce of a scalar, so masks keep the scores' sharding.
"""

from __future__ import annotations

import functools
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


def _before(shape, cut, dtype):
  """``flat_index(entry) < cut`` for every entry, as a lexicographic compare of iotas.

  No index array is built: each dimension compares its iota with one digit of ``cut``.
  """
  cut = jnp.clip(cut, 0, int(np.prod(shape, dtype=np.int64)))
  digits, rest = [], cut
  for size in reversed(shape):
    digits.append(rest % dtype(size))
    rest = rest // dtype(size)
  digits.reverse()
  overflow = rest > 0  # cut == size: every entry is before it
  less = jnp.zeros(shape, bool)
  equal = jnp.ones(shape, bool)
  for axis, digit in enumerate(digits):
    iota = lax.broadcasted_iota(dtype, shape, axis)
    less = less | (equal & (iota < digit))
    equal = equal & (iota == digit)
  return less | overflow


def _masked(cond, eligible):
  return cond if eligible is None else cond & eligible


def _count_one(cond, count_dtype):
  """Number of True entries. Row sums in float32 (exact below 2**24 per row, and much faster
  on CPU than an integer reduction), then an integer total."""
  if cond.ndim == 0:
    return cond.astype(count_dtype)
  if cond.shape[-1] >= 2**24:
    return jnp.sum(cond, dtype=count_dtype)
  rows = jnp.sum(cond.astype(jnp.float32), axis=-1)
  return jnp.sum(rows.astype(count_dtype), dtype=count_dtype)


_SHARED_TEMP_MIN = 1 << 20  # leaves at least this big are counted in a conditional


def _count(cond, leaves, count_dtype):
  """Total of ``cond(*leaf)`` over leaves, one leaf after the other.

  Counting materialises one float32 row-sum input per leaf. Big leaves are counted inside a
  ``lax.cond`` whose predicate depends on the running total (always true): the branches run in
  sequence and XLA gives all of them one shared temporary buffer, so the extra memory is that
  of the largest leaf, not of all leaves together.
  """
  total = jnp.zeros((), count_dtype)
  for leaf in leaves:
    if len(leaves) == 1 or leaf[0].size < _SHARED_TEMP_MIN:
      total, leaf = lax.optimization_barrier((total, leaf))  # one pass at a time
      total = total + _count_one(cond(*leaf), count_dtype)
    else:
      total = lax.cond(total >= 0, lambda t, l: t + _count_one(cond(*l), count_dtype),
                       lambda t, l: t, total, leaf)
  return total


def in_sequence(fns, shapes):
  """Calls ``fns[i]()`` (each returning a bool array of ``shapes[i]``) one after the other.

  Each big call runs in a ``lax.cond`` predicated on the previous result (always true), so
  independent per-leaf searches do not run at once and share their temporary memory.
  """
  out, token = [], jnp.zeros((), jnp.int32)
  for fn, shape in zip(fns, shapes):
    if int(np.prod(shape, dtype=np.int64)) < _SHARED_TEMP_MIN:
      out.append(fn())
      continue
    mask = lax.cond(token >= 0, fn, lambda: jnp.zeros(shape, bool))
    token = mask.reshape(-1)[0].astype(jnp.int32)
    out.append(mask)
  return out


@functools.partial(jax.jit, static_argnames=("count_dtype",))
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
    first, then row-major position), NaN ranked lowest. Compiled once per shapes and dtypes
    (eager calls are one dispatch; under an outer ``jit`` it is inlined).
  """
  dtype = search_dtype([x.dtype for x in scores])
  xs = [x.astype(dtype) for x in scores]  # fused into each pass; no copy is kept
  k = jnp.asarray(k, count_dtype)
  leaves = list(zip(xs, eligible))
  n_valid = _count(lambda x, e: _masked(~jnp.isnan(x), e), leaves, count_dtype)
  threshold = _threshold(xs, eligible, jnp.clip(k, 0, n_valid), dtype, count_dtype)
  use_nan = k > n_valid  # keep every number, then NaNs in index order

  def greater(x, e):
    return _masked(jnp.where(use_nan, ~jnp.isnan(x), x > threshold), e)

  def tied(x, e):
    return _masked(jnp.where(use_nan, jnp.isnan(x), x == threshold), e)

  wanted = jnp.maximum(k - _count(greater, leaves, count_dtype), 0)
  cut = _tie_cut(tied, leaves, wanted, count_dtype)
  masks, offset = [], 0
  for x, e in leaves:
    masks.append(greater(x, e) | (tied(x, e) & _before(x.shape, cut - offset, count_dtype)))
    offset += int(np.prod(x.shape, dtype=np.int64))
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
    enough = _count(lambda x, e: _masked(x >= t, e), list(zip(xs, eligible)), count_dtype) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - key_dtype(1))

  lo, _ = lax.fori_loop(0, steps, step, (jnp.asarray(lo), jnp.asarray(hi)))
  return _value_of(lo, dtype)


def _tie_cut(tied, leaves, wanted, count_dtype):
  """Smallest global flat index ``J`` such that ``wanted`` tied entries lie below ``J``.

  ``tied(x, e)`` gives a leaf's tie mask; it is recomputed where used, never stored.
  """
  offsets = np.cumsum([0] + [int(np.prod(x.shape, dtype=np.int64)) for x, _ in leaves])
  indexed = [(x, e, count_dtype(o)) for (x, e), o in zip(leaves, offsets[:-1])]
  n_ties = _count(lambda x, e, o: tied(x, e), indexed, count_dtype)

  def below(cut):
    return _count(lambda x, e, o: tied(x, e) & _before(x.shape, cut - o, count_dtype), indexed,
                  count_dtype)

  def not_done(bounds):
    return bounds[0] < bounds[1]

  def step(bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = below(mid) >= wanted
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  end = jnp.asarray(int(offsets[-1]), count_dtype)
  start = jnp.where(n_ties <= wanted, end, jnp.asarray(0, count_dtype))
  _, cut = lax.while_loop(not_done, step, (start, end))
  return cut
