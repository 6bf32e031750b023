"""Codings of a sparse mask's minority positions as gaps: Golomb-Rice and rANS.

``gaps[i]`` is the number of entries skipped before the ``i``-th position (``positions =
cumsum(gaps + 1) - 1``). Both codings split a gap into a quotient ``g >> k`` and ``k`` low
bits; the low bits are stored as they are (``k`` bits per gap, most significant first,
``np.packbits``), the quotients either in unary (Golomb-Rice) or as order-0 rANS symbols
(``_rans``), where quotients from 255 up are an escape symbol 255 followed, after the low
bits, by ``q - 255`` as an unsigned LEB128 varint. Decoders check every size and bound and
raise ``CorruptError``.
"""

from __future__ import annotations

import numpy as np

from jaxprune.export import _rans
from jaxprune.export._rans import CorruptError

ESCAPE = 255
_MAX_VARINT_BYTES = 9  # 63 bits


def _guess_k(gaps: np.ndarray) -> int:
  mean = float(gaps.mean()) if gaps.size else 0.0
  return max(0, int(np.log2(max(mean * np.log(2), 1.0))))


def _low_bits(gaps: np.ndarray, k: int) -> bytes:
  shifts = np.arange(k - 1, -1, -1, dtype=np.int64)
  return np.packbits(((gaps[:, None] >> shifts) & 1).astype(bool).reshape(-1)).tobytes()


def _read_low_bits(buf: np.ndarray, count: int, k: int) -> np.ndarray | int:
  if not k:
    return 0
  bits = np.unpackbits(buf, count=count * k).reshape(count, k).astype(np.int64)
  return bits @ (1 << np.arange(k - 1, -1, -1, dtype=np.int64))


def positions(gaps: np.ndarray, n: int) -> np.ndarray:
  """Sorted positions from gaps; raises unless they all lie in ``[0, n)``."""
  if gaps.size and (float(gaps.sum(dtype=np.float64)) + gaps.size > n or (gaps < 0).any()):
    raise CorruptError(f"the coded mask has positions beyond its {n} entries")
  return np.cumsum(gaps + 1) - 1


# ------------------------------------------------------------------------------ Golomb-Rice


def _rice_cost(gaps: np.ndarray, k: int) -> int:
  return int((gaps >> k).sum()) + gaps.size * (1 + k)


def rice_encode(gaps: np.ndarray):
  """``(k, unary bits, data)``: each quotient ``q`` as ``q`` one bits and a zero, packed;
  then the low bits."""
  guess = _guess_k(gaps)
  k = min(range(max(0, guess - 2), guess + 3), key=lambda j: _rice_cost(gaps, j))
  quotients = gaps >> k
  unary = np.ones(int(quotients.sum()) + gaps.size, bool)
  unary[np.cumsum(quotients + 1) - 1] = False
  return k, unary.size, np.packbits(unary).tobytes() + _low_bits(gaps, k)


def rice_decode(data: bytes, count: int, k: int, unary_bits: int) -> np.ndarray:
  unary_bytes = (unary_bits + 7) // 8
  expected = unary_bytes + (count * k + 7) // 8
  if len(data) != expected:
    raise CorruptError(f"the Rice-coded mask holds {len(data)} bytes, expected {expected}")
  buf = np.frombuffer(data, np.uint8)
  unary = np.unpackbits(buf[:unary_bytes], count=unary_bits)
  ends = np.flatnonzero(unary == 0)
  if ends.size != count or (count and ends[-1] != unary_bits - 1):
    raise CorruptError(f"the Rice-coded mask holds {ends.size} gaps, expected {count}")
  quotients = np.diff(ends, prepend=-1) - 1
  return (quotients.astype(np.int64) << k) + _read_low_bits(buf[unary_bytes:], count, k)


# -------------------------------------------------------------------------------------- rANS


def varints(values: np.ndarray) -> bytes:
  """Unsigned LEB128 of each value (``< 2**63``), concatenated."""
  v = np.asarray(values, np.uint64).reshape(-1)
  if v.size == 0:
    return b""
  shifts = np.arange(7, 7 * _MAX_VARINT_BYTES, 7, dtype=np.uint64)
  lengths = 1 + ((v[:, None] >> shifts) > 0).sum(axis=1)
  first = np.cumsum(lengths) - lengths
  j = np.arange(int(lengths.sum())) - np.repeat(first, lengths)
  value = np.repeat(v, lengths)
  more = np.repeat(lengths, lengths) - 1 > j
  out = ((value >> (7 * j).astype(np.uint64)) & np.uint64(0x7F)) | (more * np.uint64(0x80))
  return out.astype(np.uint8).tobytes()


def read_varints(buf: np.ndarray, count: int) -> np.ndarray:
  """Exactly ``count`` varints filling ``buf``: ``int64[count]``."""
  ends = np.flatnonzero(buf < 0x80)
  if ends.size != count or (ends[-1] + 1 if count else 0) != buf.size:
    raise CorruptError(f"the escape section holds {ends.size} varints in {buf.size} bytes, "
                       f"expected {count}")
  if count == 0:
    return np.zeros(0, np.int64)
  first = np.concatenate([[0], ends[:-1] + 1])
  lengths = ends - first + 1
  if lengths.max() > _MAX_VARINT_BYTES:
    raise CorruptError("an escape varint is longer than 63 bits")
  j = np.arange(buf.size) - np.repeat(first, lengths)
  parts = (buf.astype(np.uint64) & np.uint64(0x7F)) << (7 * j).astype(np.uint64)
  return np.add.reduceat(parts, first).astype(np.int64)


def _rans_parts(gaps: np.ndarray, k: int):
  quotients = gaps >> k
  return np.minimum(quotients, ESCAPE).astype(np.uint8), quotients[quotients >= ESCAPE] - ESCAPE


def _rans_cost(gaps: np.ndarray, k: int) -> float:
  symbols, escapes = _rans_parts(gaps, k)
  return _rans.estimate(symbols) + gaps.size * k / 8 + len(varints(escapes))


def rans_encode(gaps: np.ndarray):
  """``(k, parts)``: the pending rANS stream of the quotients (``_rans.Pending``), the low
  bits and the escaped quotients."""
  if gaps.size == 0:
    return 0, []
  guess = _guess_k(gaps)
  k = min(range(max(0, guess - 6), guess + 1), key=lambda j: _rans_cost(gaps, j))
  symbols, escapes = _rans_parts(gaps, k)
  return k, [_rans.pending(symbols), _low_bits(gaps, k), varints(escapes)]


def rans_decode(data: bytes, count: int, k: int, n: int, rans=_rans.decode) -> np.ndarray:
  """The gaps of :func:`rans_encode`; ``rans`` decodes the stream (``_rans.decode`` or a
  look-up of streams decoded beforehand)."""
  symbols, offset = rans(data, count, 0)
  low_end = offset + (count * k + 7) // 8
  if low_end > len(data):
    raise CorruptError(f"the rANS-coded mask holds {len(data)} bytes, its low bits end at "
                       f"{low_end}")
  buf = np.frombuffer(data, np.uint8)
  quotients = symbols.astype(np.int64)
  escaped = quotients == ESCAPE
  quotients[escaped] += read_varints(buf[low_end:], int(escaped.sum()))
  if quotients.size and quotients.max() > n >> k:
    raise CorruptError(f"the rANS-coded mask has a gap beyond its {n} entries")
  return (quotients << k) + _read_low_bits(buf[offset:low_end], count, k)
