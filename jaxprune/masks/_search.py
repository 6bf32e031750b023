"""Exact top-k selection by counting search, with no sort and no concatenation of leaves.

The k-th largest score is found by counting ``scores >= candidate`` over the order-preserving
integer keys of the floating-point values (NaN gets the lowest key, below -inf). A strided
sample of a few thousand entries places the first two candidates; every pass over the data
counts two candidate keys at once (:func:`jaxprune.masks._xla.packed_row_counts`) and keeps the
counts per row. Candidates are placed by interpolating the counts (with a fallback to splitting
the bracket in thirds), and the search stops as soon as a candidate keeps exactly k, or the
bracket holds one key: then the k-th value is tied and the row counts of the last pass say
which rows hold the ties. The lowest flat indices among the ties are kept (leaf order first):
a bisection over the (small) row counts finds the row of the cut, one reduction reads that row,
and a bisection over the row finds the column. Ties thus cost one extra read of one leaf, not a
search over the flat index. Entries that are not ``eligible`` (pruned before) are never kept.
On sharded arrays every step is a local comparison plus an all-reduce, so masks keep the
scores' sharding. :func:`search_stats` returns the debug counters (passes, tie reads).

Memory on XLA:CPU (jax 0.10): a count pass materialises one float32 input per leaf (float sums
go to YNNPACK, which does not fuse the comparison into the sum); passes over big leaves run one
at a time and share that buffer (:func:`jaxprune.masks._xla.after`). The scores are an operand
of the search loop, so scores computed in the same jit (``global_topk(magnitude(p))``) are
materialised once: XLA sinks only broadcast/iota-rooted values into while loops, not
``abs(param)``. Temporaries are about the largest leaf for precomputed scores and one copy of
the scores more for scores computed in the jit.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune.masks import _xla

_UINT = {16: np.uint16, 32: np.uint32, 64: np.uint64}
_SAMPLE = 4096  # entries of the scores sampled to place the first candidates
_Z = 4.0  # half-width of the sample bracket, in standard deviations of the sample estimate
_FLAT_ROW = 1024  # 1-D leaves at least 64 times this long are searched as rows of this length


def search_dtype(dtypes) -> np.dtype:
  """The float dtype in which scores of the given dtypes are compared (the widest one)."""
  return np.dtype(jnp.result_type(*[jnp.dtype(d) for d in dtypes]))


def _bits(dtype) -> int:
  return np.dtype(dtype).itemsize * 8


def _key_dtype(dtype):
  """Unsigned dtype for keys and bracket arithmetic (uint32 for 16- and 32-bit floats)."""
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


def _key_range(dtype):
  """(NaN key, key of +inf + 1): ``count(>= first)`` counts every entry, ``count(>= last)`` 0.

  NaN ranks below every number: its key is that of -inf minus one.
  """
  key_dtype = _key_dtype(dtype)
  return key_dtype(_key_of(-np.inf, dtype) - 1), key_dtype(_key_of(np.inf, dtype) + 1)


def _ge(x, e, key, dtype):
  """``x >= value(key)`` where ``e`` (eligible) holds; the NaN key selects every entry."""
  nan_key, _ = _key_range(dtype)
  out = (x >= _value_of(key, dtype)) | (key <= nan_key)
  return out if e is None else out & e


def _view(x):
  """The leaf as an array of rows (at least 2-D): row counts are reductions over the last axis."""
  if x.ndim >= 2:
    return x
  n = x.size
  if n >= 64 * _FLAT_ROW and n % _FLAT_ROW == 0:
    return x.reshape(n // _FLAT_ROW, _FLAT_ROW)
  return x.reshape(1, max(n, 1)) if n else x.reshape(1, 0)


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
  return _select(scores, eligible, k, count_dtype)[0]


@functools.partial(jax.jit, static_argnames=("count_dtype",))
def search_stats(scores, eligible, k, *, count_dtype=jnp.int32) -> dict:
  """Debug counters of one :func:`top_k` call (for tests and benchmarks).

  ``passes``: full counting passes over all leaves (each counts two candidates);
  ``tie_reads``: reads of one leaf to place the cut among tied entries (0 or 1);
  ``small_steps``: bisection steps over row counts and one row (small arrays, not the data).
  """
  return _select(scores, eligible, k, count_dtype)[1]


def _select(scores, eligible, k, count_dtype):
  dtype = search_dtype([x.dtype for x in scores])
  shapes = [x.shape for x in scores]
  leaves = [(_view(x.astype(dtype)), None if e is None else _view(e))
            for x, e in zip(scores, eligible)]
  k = jnp.asarray(k, count_dtype)
  kk = jnp.maximum(k, 1)
  lo, hi, c_lo, c_hi, rows_lo, rows_hi, passes = _narrow(leaves, kk, dtype, count_dtype)
  exact = c_lo <= kk  # keep x >= lo: exactly k entries, or every eligible one if fewer
  t_hi = jnp.where(exact, lo, hi)
  wanted = jnp.where(exact, 0, kk - c_hi)
  cuts, tie_reads, small = _tie_cuts(leaves, rows_lo, rows_hi, wanted, lo, hi, dtype,
                                     count_dtype)

  def keep(x, e, cut):
    tied = _ge(x, e, lo, dtype) & ~_ge(x, e, hi, dtype)
    return (_ge(x, e, t_hi, dtype) | (tied & _before(x.shape, cut, count_dtype))) & (k > 0)

  masks, token = [], jnp.zeros((), jnp.int32)
  for (x, e), cut, shape in zip(leaves, cuts, shapes):
    mask = _xla.after(token, keep, x, e, cut, big=_xla.size(x.shape) >= _xla.BIG)
    token = _xla.token_of(mask)
    masks.append(mask.reshape(shape))
  return masks, {"passes": passes, "tie_reads": tie_reads, "small_steps": small}


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


def _first_candidates(leaves, k, dtype):
  """Two keys ``a <= b`` from sample quantiles, meant to bracket the k-th largest score.

  Bisection over keys on a strided sample for the keys whose scaled sample counts reach
  ``k +- spread``; nothing here reads the full data (the first pass counts these two keys).
  """
  nan_key, top = _key_range(dtype)
  total = sum(_xla.size(x.shape) for x, _ in leaves)
  samples = [_sample(x, e, min(1.0, _SAMPLE / max(total, 1))) for x, e in leaves]
  taken = sum(_xla.size(s.shape) for s, _, _ in samples)
  per_entry = total / max(taken, 1)  # full entries per sampled entry
  kf = k.astype(jnp.float32)
  spread = _Z * jnp.sqrt(kf * jnp.maximum(1.0 - kf / total, 0.0) * per_entry) + 2.0 * per_entry

  def estimate(key):  # sampled count(x >= key), scaled to the full data
    return sum(jnp.sum(_ge(s, e, key, dtype), dtype=jnp.float32) * w for s, e, w in samples)

  def step(_, bounds):  # bisection for the largest key whose estimate reaches each target
    keys, ends = bounds
    mid = keys + (ends - keys + 1) // 2
    enough = jnp.stack([estimate(m) for m in mid]) >= targets
    return jnp.where(enough, mid, keys), jnp.where(enough, ends, mid - 1)

  # The bracket starts no wider than the sampled scores: the lower key at most the smallest
  # sampled number, the upper one at least just above the largest (point masses settle at once).
  everything = estimate(nan_key + 1)  # sampled numbers, scaled
  low = jnp.where(kf > everything, kf + spread, jnp.minimum(kf + spread, everything - 0.5 * per_entry))
  targets = jnp.stack([low,
                       jnp.maximum(kf - spread, 0.5 * per_entry)])
  start = (jnp.full(2, nan_key + 1), jnp.full(2, top - 1))
  (g_lo, g_hi), _ = lax.fori_loop(0, _bits(dtype), step, start)
  return g_lo, g_hi + 1  # count(>= g_hi + 1) = count(> quantile)


def _count_pass(leaves, a, b, dtype, count_dtype):
  """Row counts of ``x >= value(a)`` and ``x >= value(b)`` (keys ``a <= b``), leaf by leaf."""
  rows_a, rows_b, token = [], [], jnp.zeros((), jnp.int32)

  def count(x, e):
    return _xla.packed_row_counts(_ge(x, e, a, dtype), _ge(x, e, b, dtype), count_dtype)

  for x, e in leaves:
    ra, rb = _xla.after(token, count, x, e, big=len(leaves) > 1 and _xla.size(x.shape) >= _xla.BIG)
    token = token + _xla.token_of(ra)
    rows_a.append(ra)
    rows_b.append(rb)
  return rows_a, rows_b


def _total(rows, count_dtype):
  return sum((jnp.sum(r, dtype=count_dtype) for r in rows), jnp.zeros((), count_dtype))


def _narrow(leaves, k, dtype, count_dtype):
  """Bracket ``lo < hi`` with ``count(>= lo) >= k > count(>= hi)``, narrowed until
  ``count(>= lo) <= k`` (the mask is ``x >= lo``) or ``hi == lo + 1`` (ties at ``lo``).

  Returns ``(lo, hi, count(>= lo), count(>= hi), rows(>= lo), rows(>= hi), passes)``.
  Each pass counts two candidates: first the sample's, then keys around the linear
  interpolation of the counts (keys are linear in the value within a binade), a few standard
  deviations of a binomial count apart while the bracket holds many entries and closer when few
  remain. After a pass whose candidates missed the threshold the next one splits the bracket in
  thirds, so the bracket always shrinks geometrically. ``count(>= lo)`` starts unknown (-1)
  where some entries are not eligible; the first pass that keeps ``lo`` counts it.
  """
  key_dtype = _key_dtype(dtype)
  real = np.float64 if key_dtype == np.uint64 else np.float32
  cap = real(np.nextafter(real(2.0**_bits(key_dtype)), real(0)))
  nan_key, top = _key_range(dtype)
  first_a, first_b = _first_candidates(leaves, k, dtype)
  all_eligible = all(e is None for _, e in leaves)
  total = sum(_xla.size(x.shape) for x, _ in leaves)
  full_rows = [jnp.full(x.shape[:-1], x.shape[-1], count_dtype) for x, _ in leaves]
  zero_rows = [jnp.zeros(x.shape[:-1], count_dtype) for x, _ in leaves]

  def not_done(s):
    lo, hi, c_lo = s[0], s[1], s[2]
    return (c_lo < 0) | ((c_lo > k) & (hi - lo > 1))

  def step(s):
    lo, hi, c_lo, c_hi, rows_lo, rows_hi, missed, gap, passes = s
    width = hi - lo
    known = c_lo >= 0
    n = (c_lo - c_hi).astype(real)
    p = (c_lo - k).astype(real) / jnp.maximum(n, 1)  # fraction of the bracket below the k-th
    spread = jnp.where(n > 64, 3.0, 0.5) * jnp.sqrt(n * p * (1 - p)) + 0.5
    w = width.astype(real)
    guess, half = p * w, jnp.minimum(spread / jnp.maximum(n, 1) * w, w / 4)

    def offset(f):
      return jnp.clip(jnp.clip(f, 1, cap).astype(key_dtype), key_dtype(1), width - 1)

    third = jnp.maximum(width // 3, key_dtype(1))
    a = lo + jnp.where(missed, third, offset(jnp.floor(guess - half)))
    b = lo + jnp.where(missed, jnp.minimum(2 * third, width - 1), offset(jnp.ceil(guess + half)))
    # After a thirds pass that found the middle third empty, a point mass may sit at an end of
    # the bracket: count both ends (if nothing lies between them, this settles the search).
    edges = gap & known
    thirds = missed & ~edges & known & (passes > 0)
    a, b = jnp.where(edges, lo + 1, a), jnp.where(edges, hi - 1, b)
    a = jnp.where(known, a, lo)  # count(>= lo) unknown: count it, and split the bracket
    b = jnp.where(known, b, lo + jnp.maximum(width // 2, key_dtype(1)))
    a, b = jnp.where(passes == 0, first_a, a), jnp.where(passes == 0, first_b, b)
    r_a, r_b = _count_pass(leaves, a, b, dtype, count_dtype)
    c_a, c_b = _total(r_a, count_dtype), _total(r_b, count_dtype)
    up_b, up_a, at_lo = c_b >= k, c_a >= k, a == lo  # the k-th is at or above b / a
    pick = lambda if_b, if_a, if_lo, other: jax.tree.map(
        lambda vb, va, vl, vo: jnp.where(up_b, vb, jnp.where(up_a, va, jnp.where(at_lo, vl, vo))),
        if_b, if_a, if_lo, other)
    lo, c_lo, rows_lo = pick((b, c_b, r_b), (a, c_a, r_a), (lo, c_a, r_a), (lo, c_lo, rows_lo))
    hi, c_hi, rows_hi = pick((hi, c_hi, rows_hi), (b, c_b, r_b), (hi, c_hi, rows_hi),
                             (a, c_a, r_a))
    missed = known & (passes > 0) & ~missed & (up_b | ~up_a)
    gap = thirds & (c_a == c_b)  # the middle third of the bracket held no entry
    return lo, hi, c_lo, c_hi, rows_lo, rows_hi, missed, gap, passes + 1

  c_lo = jnp.asarray(total if all_eligible else -1, count_dtype)
  start = (nan_key, top, c_lo, jnp.zeros((), count_dtype), full_rows, zero_rows,
           jnp.zeros((), bool), jnp.zeros((), bool), jnp.zeros((), jnp.int32))
  start = (jnp.asarray(nan_key), jnp.asarray(top)) + start[2:]
  lo, hi, c_lo, c_hi, rows_lo, rows_hi, _, _, passes = lax.while_loop(not_done, step, start)
  return lo, hi, c_lo, c_hi, rows_lo, rows_hi, passes


def _digits(shape, index, count_dtype):
  """Row-major coordinates of a flat ``index`` (clipped), and whether it is past the end."""
  digits, rest = [], index
  for size in reversed(shape):
    digits.append(rest % count_dtype(size))
    rest = rest // count_dtype(size)
  return digits[::-1], rest > 0


def _before(shape, cut, count_dtype):
  """``flat_index(entry) < cut`` for every entry, as a lexicographic compare of iotas.

  No index array is built: each dimension compares its iota with one digit of ``cut``.
  """
  cut = jnp.clip(cut, 0, _xla.size(shape)).astype(count_dtype)
  digits, overflow = _digits(shape, cut, count_dtype)
  less, equal = jnp.zeros(shape, bool), jnp.ones(shape, bool)
  for axis, digit in enumerate(digits):
    iota = lax.broadcasted_iota(count_dtype, shape, axis)
    less = less | (equal & (iota < digit))
    equal = equal & (iota == digit)
  return less | overflow


def _at(shape, index, count_dtype):
  """``flat_index(entry) == index`` for every entry (no index array is built)."""
  digits, _ = _digits(shape, index.astype(count_dtype), count_dtype)
  equal = jnp.ones(shape, bool)
  for axis, digit in enumerate(digits):
    equal = equal & (lax.broadcasted_iota(count_dtype, shape, axis) == digit)
  return equal


def _smallest(n, reaches, count_dtype):
  """Smallest ``m`` in ``[1, n]`` with ``reaches(m)`` (monotone, true at ``n``), and steps."""

  def step(s):
    lo, hi, steps = s
    mid = lo + (hi - lo) // 2
    ok = reaches(mid)
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi), steps + 1

  lo, _, steps = lax.while_loop(lambda s: s[0] < s[1], step,
                                (jnp.ones((), count_dtype), jnp.asarray(n, count_dtype),
                                 jnp.zeros((), jnp.int32)))
  return lo, steps


def _tie_cuts(leaves, rows_lo, rows_hi, wanted, lo, hi, dtype, count_dtype):
  """Per leaf, the local flat index below which its tied entries (keys in ``[lo, hi)``) are kept.

  The ``wanted`` ties with the lowest flat indices are kept, leaf order first. At most one leaf
  keeps some but not all of its ties; only that leaf is read again, in one reduction.
  Returns ``(cuts, tie_reads, small_steps)``.
  """
  ties = [a - b for a, b in zip(rows_lo, rows_hi)]
  cuts, before = [], jnp.zeros((), count_dtype)
  reads, small = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
  for (x, e), t in zip(leaves, ties):
    n_ties = jnp.sum(t, dtype=count_dtype)
    w = jnp.clip(wanted - before, 0, n_ties)
    before = before + n_ties
    size = _xla.size(x.shape)

    def partial(x, e, t, w):
      return _leaf_cut(x, e, t, w, lo, hi, dtype, count_dtype)

    def whole(x, e, t, w):
      return jnp.where(w > 0, size, 0).astype(count_dtype), jnp.zeros((), jnp.int32)

    cut, steps = lax.cond((w > 0) & (w < n_ties), partial, whole, x, e, t, w)
    cuts.append(cut)
    reads = reads + ((w > 0) & (w < n_ties)).astype(jnp.int32)
    small = small + steps
  return cuts, reads, small


def _leaf_cut(x, e, ties, w, lo, hi, dtype, count_dtype):
  """Local cut of one leaf keeping its first ``w`` tied entries (``ties``: tied count per row)."""
  rows, length = ties.shape, x.shape[-1]
  n_rows = _xla.size(rows)

  def rows_below(m):  # tied entries in the first m rows
    return jnp.sum(jnp.where(_before(rows, m, count_dtype), ties, 0), dtype=count_dtype)

  row_end, row_steps = _smallest(n_rows, lambda m: rows_below(m) >= w, count_dtype)
  row = row_end - 1
  need = w - rows_below(row)
  tied = _ge(x, e, lo, dtype) & ~_ge(x, e, hi, dtype)
  in_row = tied & _at(rows, row, count_dtype)[..., None]
  line = jnp.sum(in_row.astype(jnp.float32), axis=tuple(range(x.ndim - 1))).astype(count_dtype)

  def cols_below(m):
    return jnp.sum(jnp.where(lax.iota(count_dtype, length) < m, line, 0), dtype=count_dtype)

  col_end, col_steps = _smallest(length, lambda m: cols_below(m) >= need, count_dtype)
  return row * count_dtype(length) + col_end, row_steps + col_steps
