"""Exact top-k selection by counting search, with no sort and no concatenation of leaves.

The k-th largest score is found by counting ``scores >= candidate`` (a reduction, summed over
all leaves for a global selection) over the order-preserving integer keys of the floating-point
values. A strided sample of a few thousand entries gives a first bracket of keys, checked with
one count on the full data; each further pass counts two candidate keys placed by interpolating
the counts (with a fallback to splitting the bracket in thirds), and the search stops as soon as
a candidate keeps exactly k. Otherwise the k-th value is tied, and the ties are broken by a
bisection over the flat index (lower index kept first). NaN scores rank below every number;
entries that are not ``eligible`` (pruned before) are never kept. On sharded arrays every step
is a local comparison plus an all-reduce of scalars, so masks keep the scores' sharding.
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
  """Total of ``cond(*leaf)`` (a bool array) over leaves."""
  return _total(lambda *leaf: (_count_one(cond(*leaf), count_dtype),), leaves, 1, count_dtype)[0]


def _count_two(leaves, a, b, dtype, count_dtype):
  """``(count(x >= value(a)), count(x >= value(b)))`` over eligible entries, for keys a <= b.

  Rows of at most ``_PACK_ROW`` entries are counted in one pass: an entry adds 1 to a float32
  row sum if it is only ``>= a`` and ``R + 1`` if it is also ``>= b``, ``R`` greater than the row
  length, so the row sum ``count_a + R * count_b`` is exact (below 2**24) and splits back.
  """
  ta, tb = _value_of(a, dtype), _value_of(b, dtype)
  radix = _PACK_ROW + 1

  def count_leaf(x, e):
    ge_a, ge_b = _masked(x >= ta, e), _masked(x >= tb, e)
    if x.ndim == 0 or x.shape[-1] > _PACK_ROW:
      return _count_one(ge_a, count_dtype), _count_one(ge_b, count_dtype)
    rows = jnp.sum(jnp.where(ge_b, float(radix + 1), jnp.where(ge_a, 1.0, 0.0)), axis=-1)
    rows = rows.astype(count_dtype)
    return (jnp.sum(rows % radix, dtype=count_dtype),
            jnp.sum(rows // radix, dtype=count_dtype))

  return _total(count_leaf, leaves, 2, count_dtype)


def _total(count_leaf, leaves, arity, count_dtype):
  """Sum of ``count_leaf(*leaf)`` (a tuple of ``arity`` counts) over leaves, one at a time.

  Counting materialises one float32 row-sum input per leaf. Big leaves are counted inside a
  ``lax.cond`` whose predicate depends on the running total (always true): the branches run in
  sequence and XLA gives all of them one shared temporary buffer, so the extra memory is that
  of the largest leaf, not of all leaves together.
  """
  total = tuple(jnp.zeros((), count_dtype) for _ in range(arity))

  def add(t, leaf):
    return tuple(a + b for a, b in zip(t, count_leaf(*leaf)))

  for leaf in leaves:
    if len(leaves) == 1 or leaf[0].size < _SHARED_TEMP_MIN:
      total, leaf = lax.optimization_barrier((total, leaf))  # one pass at a time
      total = add(total, leaf)
    else:
      total = lax.cond(total[0] >= 0, add, lambda t, l: t, total, leaf)
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

  The search keeps a bracket of keys ``lo < hi`` with ``count(>= lo) >= k > count(>= hi)``
  (:func:`_bracket`, then :func:`_narrow`) until ``count(>= lo) == k`` (the mask is
  ``x >= lo``) or ``hi == lo + 1`` (every entry in the bracket is tied at ``lo``; the lowest
  indices among them are kept, :func:`_tie_cut`). If fewer than ``k`` numbers are eligible,
  all of them are kept and then NaNs in index order.
  """
  dtype = search_dtype([x.dtype for x in scores])
  xs = [x.astype(dtype) for x in scores]  # fused into each pass; no copy is kept
  k = jnp.asarray(k, count_dtype)
  kk = jnp.maximum(k, 1)
  leaves = list(zip(xs, eligible))
  lo, hi, c_lo, c_hi = _narrow(leaves, kk, *_bracket(leaves, kk, dtype, count_dtype), dtype,
                               count_dtype)
  use_nan = c_lo < kk  # c_lo is then the number of eligible non-NaN entries
  exact = c_lo == kk
  t_lo, t_hi = _value_of(lo, dtype), _value_of(jnp.where(exact, lo, hi), dtype)

  def greater(x, e):  # exactly c_hi entries (c_lo if exact, all numbers if use_nan)
    return _masked(jnp.where(use_nan, ~jnp.isnan(x), x >= t_hi), e)

  def tied(x, e):  # exactly c_lo - c_hi entries unless use_nan
    return _masked(jnp.where(use_nan, jnp.isnan(x), (x >= t_lo) & ~(x >= t_hi)), e)

  n_greater = jnp.where(use_nan | exact, c_lo, c_hi)
  n_ties = lax.cond(use_nan, lambda: _count(tied, leaves, count_dtype), lambda: c_lo - n_greater)
  cut = _tie_cut(tied, leaves, kk - n_greater, n_ties, count_dtype)
  masks, offset = [], 0
  for x, e in leaves:
    keep = greater(x, e) | (tied(x, e) & _before(x.shape, cut - offset, count_dtype))
    masks.append(keep & (k > 0))
    offset += int(np.prod(x.shape, dtype=np.int64))
  return masks


_SAMPLE = 4096  # entries of the scores sampled to bracket the threshold
_Z = 4.0  # half-width of the sample bracket, in standard deviations of the sample estimate
_PACK_ROW = 4095  # rows up to this length count two thresholds in one float32 pass


def _key_range(dtype):
  """(key of -inf, key of +inf + 1): ``count(>= first)`` is #numbers, ``count(>= last)`` 0."""
  key_dtype = _key_dtype(dtype)
  return key_dtype(_key_of(-np.inf, dtype)), key_dtype(_key_of(np.inf, dtype) + 1)


def _sample(x, e, rate):
  """A static strided slice of about ``rate * x.size`` entries (and its eligibility).

  Strides are powers of two dividing the dimension, so that on sharded arrays every device
  slices its own shard (no data moves); balanced over the axes so that row- or column-wise
  structure is seen in the sample.
  """
  strides = [1] * x.ndim
  while x.ndim and np.prod(strides) * 2 * rate <= 1:
    free = [i for i in range(x.ndim) if x.shape[i] % (2 * strides[i]) == 0]
    if not free:
      break
    axis = max(free, key=lambda i: x.shape[i] // strides[i])
    strides[axis] *= 2
  index = tuple(slice(None, None, s) for s in strides)
  return x[index], None if e is None else e[index], float(np.prod(strides))


def _bracket(leaves, k, dtype, count_dtype):
  """Initial ``(lo, hi, count(>= lo), count(>= hi))`` with ``count(>= lo) >= k > count(>= hi)``.

  The threshold is bracketed by two quantiles of a small strided sample (found by bisection
  over the sample's keys), then both ends are counted on the full data in one pass. Where the
  data disagree with the sample, the bracket is widened to the full key range on the failing
  side; where fewer than ``k`` numbers exist, ``count(>= lo) < k`` is returned (``lo`` = -inf).
  """
  bottom, top = _key_range(dtype)
  total = sum(int(np.prod(x.shape, dtype=np.int64)) for x, _ in leaves)
  samples = [_sample(x, e, min(1.0, _SAMPLE / max(total, 1))) for x, e in leaves]
  taken = sum(int(np.prod(s.shape, dtype=np.int64)) for s, _, _ in samples)
  per_entry = total / max(taken, 1)  # full entries per sampled entry
  kf = k.astype(jnp.float32)
  spread = _Z * jnp.sqrt(kf * jnp.maximum(1.0 - kf / total, 0.0) * per_entry) + 2.0 * per_entry

  def estimate(t):  # sampled count(x >= t), scaled to the full data
    return sum(jnp.sum(_masked(s >= t, e), dtype=jnp.float32) * w for s, e, w in samples)

  def step(_, bounds):  # bisection for the largest key whose estimate reaches each target
    keys, ends = bounds
    mid = keys + (ends - keys + 1) // 2
    enough = jnp.stack([estimate(_value_of(m, dtype)) for m in mid]) >= targets
    return jnp.where(enough, mid, keys), jnp.where(enough, ends, mid - 1)

  targets = jnp.stack([kf + spread, kf - spread])
  start = (jnp.full(2, bottom), jnp.full(2, top - 1))
  (g_lo, g_hi), _ = lax.fori_loop(0, _bits(dtype), step, start)
  g_hi = g_hi + 1  # count(>= g_hi) = count(> quantile)
  c1, c2 = _count_two(leaves, g_lo, g_hi, dtype, count_dtype)
  n_valid = lax.cond(c1 >= k, lambda: c1,
                     lambda: _count(lambda x, e: _masked(~jnp.isnan(x), e), leaves, count_dtype))
  above, inside = c2 >= k, c1 >= k
  lo = jnp.where(above, g_hi, jnp.where(inside, g_lo, bottom))
  hi = jnp.where(above, top, jnp.where(inside, g_hi, g_lo))
  c_lo = jnp.where(above, c2, n_valid)
  c_hi = jnp.where(above, 0, jnp.where(inside, c2, c1)).astype(count_dtype)
  return lo, hi, c_lo, c_hi


def _narrow(leaves, k, lo, hi, c_lo, c_hi, dtype, count_dtype):
  """Shrinks the bracket until ``count(>= lo) == k`` or ``hi == lo + 1`` (ties at ``lo``).

  Each step counts two candidate keys in one pass. They are placed around the linear
  interpolation of the counts between ``lo`` and ``hi`` (keys are linear in the value within
  a binade), a few standard deviations of a binomial count apart while the bracket holds many
  entries and closer when few remain. After a step whose candidates missed the threshold the
  next step splits the bracket in thirds, so the bracket always shrinks geometrically.
  """
  key_dtype = _key_dtype(dtype)
  real = np.float64 if key_dtype == np.uint64 else np.float32
  cap = real(np.nextafter(real(2.0**_bits(_key_dtype(dtype))), real(0)))

  def not_done(state):
    lo, hi, c_lo, _, _ = state
    return (c_lo > k) & (hi - lo > 1)

  def step(state):
    lo, hi, c_lo, c_hi, missed = state
    width = hi - lo
    n = (c_lo - c_hi).astype(real)
    p = (c_lo - k).astype(real) / n  # fraction of the bracket's entries below the threshold
    spread = jnp.where(n > 64, 3.0, 0.5) * jnp.sqrt(n * p * (1 - p)) + 0.5
    w = width.astype(real)
    guess, half = p * w, jnp.minimum(spread / n * w, w / 4)

    def offset(f):
      return jnp.clip(jnp.clip(f, 1, cap).astype(key_dtype), key_dtype(1), width - 1)

    third = jnp.maximum(width // 3, key_dtype(1))
    a = lo + jnp.where(missed, third, offset(jnp.floor(guess - half)))
    b = lo + jnp.where(missed, jnp.minimum(2 * third, width - 1), offset(jnp.ceil(guess + half)))
    c_a, c_b = _count_two(leaves, a, b, dtype, count_dtype)
    up_b, up_a = c_b >= k, c_a >= k  # the threshold is at or above b / a
    lo, c_lo, hi, c_hi = (jnp.where(up_b, b, jnp.where(up_a, a, lo)),
                          jnp.where(up_b, c_b, jnp.where(up_a, c_a, c_lo)),
                          jnp.where(up_b, hi, jnp.where(up_a, b, a)),
                          jnp.where(up_b, c_hi, jnp.where(up_a, c_b, c_a)))
    return lo, hi, c_lo, c_hi, ~missed & (up_b | ~up_a)

  state = lax.while_loop(not_done, step, (lo, hi, c_lo, c_hi, jnp.zeros((), bool)))
  return state[:4]


def _tie_cut(tied, leaves, wanted, n_ties, count_dtype):
  """Smallest global flat index ``J`` such that ``wanted`` tied entries lie below ``J``.

  ``tied(x, e)`` gives a leaf's tie mask (``n_ties`` entries in all); it is recomputed where
  used, never stored. No search runs when all ties are wanted.
  """
  offsets = np.cumsum([0] + [int(np.prod(x.shape, dtype=np.int64)) for x, _ in leaves])
  indexed = [(x, e, count_dtype(o)) for (x, e), o in zip(leaves, offsets[:-1])]

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
