"""An order-0 entropy coder: interleaved rANS over byte symbols, vectorised with numpy.

One stream codes ``count`` symbols (each in ``[0, 256)``) with one static frequency table;
the caller knows ``count`` (the manifest records it). Symbol ``i`` goes to lane ``i % lanes``
and the lanes advance together, one numpy operation per step for all of them, so a stream of
``n`` symbols takes ``steps = ceil(n / lanes)`` steps; the encoder pads the symbols to
``steps * lanes`` with the most frequent one (the first of them in symbol order), which the
decoder checks and drops. Layout of one stream (integers little-endian,
``varint`` = unsigned LEB128)::

    uint8    prob_bits (1..16): frequencies sum to M = 2**prob_bits
    varint   R, then R x (varint skip, varint length - 1): the runs of consecutive symbols
             that occur, each starting ``skip`` after the end of the previous one (or 0)
    varint   f - 1 for each symbol that occurs, in increasing symbol order
    varint   lanes (1 <= lanes <= count), varint W (words, W <= count)
    uint32   CRC-32 (zlib.crc32) of the count symbols
    lanes x uint32: every lane's state after encoding (where decoding starts)
    W x uint16: the renormalisation words, in the order decoding reads them

An empty stream (``count == 0``) is zero bytes. States live in ``[2**16, 2**32)`` and move 16
bits at a time, so a symbol costs at most one word and every step is branch-free. Decoding
checks the table (every frequency >= 1, sum M), the bounds of every read, that exactly W
words are read, that every lane ends in the encoder's initial state ``2**16`` and the CRC of
what it decoded (a damaged table can relabel symbols without any other trace); anything else
raises :class:`CorruptError`. No step count depends on the data beyond ``count`` and
``lanes``, and ``lanes`` must be at least ``count / STEPS`` (2048): decoding takes at most
2048 vectorised steps.
"""

from __future__ import annotations

import math
import zlib

import numpy as np


class CorruptError(ValueError):
  """A stream does not decode to what the manifest describes."""


LOW = 1 << 16  # the lowest state; states are in [LOW, 2**32)
STEPS = 2048  # a stream has ceil(count / STEPS) lanes (or 1 for one symbol): <= STEPS steps
_U64 = np.uint64


def _varint(values) -> bytes:
  out = bytearray()
  for v in values:
    v = int(v)
    while v >= 0x80:
      out.append(v & 0x7F | 0x80)
      v >>= 7
    out.append(v)
  return bytes(out)


class _Reader:
  """Bounds-checked reads from a byte buffer."""

  def __init__(self, data, offset: int = 0):
    self.data, self.pos = memoryview(data), offset

  def take(self, size: int) -> memoryview:
    if size < 0 or self.pos + size > len(self.data):
      raise CorruptError(f"the rANS stream ends early (needs {size} bytes at {self.pos}, holds "
                         f"{len(self.data)})")
    out = self.data[self.pos:self.pos + size]
    self.pos += size
    return out

  def varint(self, limit: int) -> int:
    value, shift = 0, 0
    while True:
      byte = self.take(1)[0]
      value |= (byte & 0x7F) << shift
      if value > limit:
        raise CorruptError(f"the rANS stream holds a count {value} > {limit}")
      if byte < 0x80:
        return value
      shift += 7


def quantized_freqs(counts: np.ndarray, prob_bits: int) -> np.ndarray:
  """Frequencies summing to ``2**prob_bits``, >= 1 where ``counts > 0``, 0 elsewhere.

  Needs at least one count and ``2**prob_bits`` >= the number of distinct symbols.
  """
  counts = np.asarray(counts, np.int64)
  total, m = int(counts.sum()), 1 << prob_bits
  f = np.where(counts > 0, np.maximum(1, (counts * m + total // 2) // total), 0)
  diff = m - int(f.sum())
  if diff > 0:
    f[int(np.argmax(counts))] += diff
  elif diff < 0:  # take the excess from the largest frequencies, none below 1
    order = np.argsort(-f, kind="stable")
    room = np.maximum(f[order] - 1, 0)
    before = np.cumsum(room) - room
    f[order] -= np.clip(-diff - before, 0, room)
  return f


def _runs(freqs: np.ndarray) -> np.ndarray:
  """``(skip, length - 1)`` of each run of consecutive symbols that occur."""
  present = np.concatenate([[False], freqs > 0, [False]])
  edges = np.flatnonzero(present[1:] != present[:-1])
  starts, ends = edges[::2], edges[1::2]
  skips = starts - np.concatenate([[0], ends[:-1]])
  return np.stack([skips, ends - starts - 1], axis=1).reshape(-1)


def _varint_size(values: np.ndarray) -> int:
  v = np.asarray(values, np.int64)
  return v.size + int((v >= 1 << 7).sum()) + int((v >= 1 << 14).sum())


def _table_bytes(freqs: np.ndarray, prob_bits: int) -> bytes:
  runs = _runs(freqs)
  return bytes([prob_bits]) + _varint([runs.size // 2, *runs, *(freqs[freqs > 0] - 1)])


def _table_size(freqs: np.ndarray) -> int:
  """``len(_table_bytes(freqs, ...))`` without building it."""
  runs = _runs(freqs)
  return 2 + _varint_size(runs) + _varint_size(freqs[freqs > 0] - 1)


def best_table(counts: np.ndarray) -> tuple[int, np.ndarray, float]:
  """``(prob_bits, freqs, estimated bits)`` minimising coded symbols plus table."""
  counts = np.asarray(counts, np.int64)
  used = counts > 0
  low = max(1, math.ceil(math.log2(max(int(used.sum()), 1))))
  best = None
  for prob_bits in range(low, 17):
    f = quantized_freqs(counts, prob_bits)
    bits = float((counts[used] * (prob_bits - np.log2(f[used]))).sum()) + 8 * _table_size(f)
    if best is None or bits < best[2]:
      best = (prob_bits, f, bits)
  assert best is not None
  return best


def lanes_for(count: int) -> int:
  return max(1, -(-count // STEPS))


def plan(symbols: np.ndarray) -> tuple[int, np.ndarray, float]:
  """``(prob_bits, freqs, estimated bytes)`` of :func:`encode` of ``symbols`` (not empty)."""
  counts = np.bincount(np.asarray(symbols, np.uint8).reshape(-1), minlength=256)
  prob_bits, freqs, bits = best_table(counts)
  lanes = 1 if (counts > 0).sum() == 1 else lanes_for(int(counts.sum()))
  return prob_bits, freqs, bits / 8 + 3 * lanes + 8  # a final state holds 0 to 16 data bits


def estimate(symbols: np.ndarray) -> float:
  """Estimated size in bytes of :func:`encode` of ``symbols`` (without encoding)."""
  return plan(symbols)[2] if symbols.size else 0.0


def encode(symbols: np.ndarray, planned: tuple | None = None) -> bytes:
  """The rANS stream of ``symbols`` (``uint8``); see the module docstring for the layout.

  ``planned`` is :func:`plan` of the same symbols, when it was already computed.
  """
  symbols = np.asarray(symbols, np.uint8).reshape(-1)
  n = symbols.size
  if n == 0:
    return b""
  prob_bits, freqs, _ = planned or plan(symbols)
  table = _table_bytes(freqs, prob_bits)
  crc = np.array([zlib.crc32(symbols.tobytes())], "<u4").tobytes()
  if (freqs > 0).sum() == 1:  # one symbol: the state never moves, no words
    return table + _varint([1, 0]) + crc + np.full(1, LOW, "<u4").tobytes()
  starts = np.concatenate([[0], np.cumsum(freqs)[:-1]]).astype(_U64)
  lanes = lanes_for(n)
  steps = -(-n // lanes)
  padded = np.concatenate([symbols, np.full(steps * lanes - n, np.argmax(freqs), np.uint8)])
  f = freqs.astype(_U64)[padded].reshape(steps, lanes)
  c = starts[padded].reshape(steps, lanes)
  limit = f << _U64(32 - prob_bits)  # a state must be below f << (32 - prob_bits) to take f
  x = np.full(lanes, LOW, _U64)
  renorm = np.zeros((steps, lanes), bool)
  low = np.empty((steps, lanes), np.uint16)
  bits, sixteen = _U64(prob_bits), _U64(16)
  for t in range(steps - 1, -1, -1):
    need = np.greater_equal(x, limit[t], out=renorm[t])
    low[t] = x  # keeps the low 16 bits
    x = np.where(need, x >> sixteen, x)
    q, r = np.divmod(x, f[t])
    x = (q << bits) + r + c[t]
  words = low[renorm]
  return (table + _varint([lanes, words.size]) + crc + x.astype("<u4").tobytes()
          + words.astype("<u2").tobytes())


def _read_table(reader: _Reader):
  prob_bits = int(reader.take(1)[0])
  if not 1 <= prob_bits <= 16:
    raise CorruptError(f"the rANS table has prob_bits {prob_bits}, not in [1, 16]")
  m = 1 << prob_bits
  present = np.zeros(256, bool)
  end = 0
  for _ in range(reader.varint(128)):
    start = end + reader.varint(256)
    end = start + reader.varint(256) + 1
    if end > 256:
      raise CorruptError("the rANS table has symbols beyond 255")
    present[start:end] = True
  if not present.any():
    raise CorruptError("the rANS table has no symbol")
  freqs = np.zeros(256, np.int64)
  for s in np.flatnonzero(present):
    freqs[s] = reader.varint(m - 1) + 1
  if int(freqs.sum()) != m:
    raise CorruptError(f"the rANS frequencies sum to {int(freqs.sum())}, expected {m}")
  return prob_bits, freqs


def decode(data, count: int, offset: int = 0) -> tuple[np.ndarray, int]:
  """``(uint8[count], end offset)``: the symbols of the stream at ``data[offset:]``.

  Raises:
    CorruptError: the stream is malformed, truncated or does not end where it should.
  """
  if count == 0:
    return np.zeros(0, np.uint8), offset
  reader = _Reader(data, offset)
  prob_bits, freqs = _read_table(reader)
  lanes = reader.varint(count)
  n_words = reader.varint(count)
  one_symbol = bool((freqs == 1 << prob_bits).any())
  if lanes < 1 or not one_symbol and -(-count // lanes) > STEPS:
    raise CorruptError(f"the rANS stream has {lanes} lanes for {count} symbols")
  crc = int(np.frombuffer(reader.take(4), "<u4")[0])
  x = np.frombuffer(reader.take(4 * lanes), "<u4").astype(_U64)
  words = np.frombuffer(reader.take(2 * n_words), "<u2").astype(_U64)
  if (x < LOW).any():
    raise CorruptError("a rANS lane state is below 2**16")
  if one_symbol:  # the encoder writes one lane in its initial state and no words
    if lanes != 1 or n_words or (x != LOW).any():
      raise CorruptError("a one-symbol rANS stream holds words or moved states")
    out = np.full(count, int(np.argmax(freqs)), np.uint8)
  else:
    out = _decode_steps(x, words, freqs, prob_bits, count)
  if zlib.crc32(out.tobytes()) != crc:
    raise CorruptError("the symbols decoded from the rANS stream fail its CRC-32")
  return out, reader.pos


def _decode_steps(x, words, freqs, prob_bits, count):
  lanes = x.size
  steps = -(-count // lanes)
  slot_symbol = np.repeat(np.arange(256, dtype=np.uint8), freqs)
  slot_freq = freqs.astype(_U64)[slot_symbol]
  starts = np.concatenate([[0], np.cumsum(freqs)[:-1]])
  slot_bias = (np.arange(1 << prob_bits) - starts[slot_symbol]).astype(_U64)  # slot - start
  out = np.empty((steps, lanes), np.uint8)
  slot = np.empty(lanes, _U64)
  mask, bits, sixteen, pos = _U64((1 << prob_bits) - 1), _U64(prob_bits), _U64(16), 0
  for t in range(steps):
    np.bitwise_and(x, mask, out=slot)
    np.take(slot_symbol, slot, out=out[t])
    x >>= bits
    x *= slot_freq[slot]
    x += slot_bias[slot]
    need = (x < LOW).nonzero()[0]
    if need.size:
      end = pos + need.size
      if end > words.size:
        raise CorruptError("the rANS stream runs out of words")
      x[need] = (x[need] << sixteen) | words[pos:end]
      pos = end
  if pos != words.size or (x != LOW).any():
    raise CorruptError("the rANS stream does not end in its initial state")
  out = out.reshape(-1)
  if (out[count:] != np.argmax(freqs)).any():
    raise CorruptError("the rANS stream's padding is not its most frequent symbol")
  return out[:count]
