"""Frequency tables of the rANS coder (``_rans``): quantisation, compact bytes, checked reads.

A table maps each symbol that occurs to a frequency ``f >= 1``, all summing to
``M = 2**prob_bits``. On disk: ``uint8 prob_bits``, ``varint R`` and ``R`` pairs
``(varint skip, varint length - 1)`` (the runs of consecutive symbols that occur, each
starting ``skip`` after the end of the previous one), then ``varint f - 1`` per symbol that
occurs, in increasing symbol order (``varint`` = unsigned LEB128).
"""

from __future__ import annotations

import math

import numpy as np


class CorruptError(ValueError):
  """A stream does not decode to what the manifest describes."""


def varint_bytes(values) -> bytes:
  out = bytearray()
  for v in values:
    v = int(v)
    while v >= 0x80:
      out.append(v & 0x7F | 0x80)
      v >>= 7
    out.append(v)
  return bytes(out)


class Reader:
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


def table_bytes(freqs: np.ndarray, prob_bits: int) -> bytes:
  runs = _runs(freqs)
  return bytes([prob_bits]) + varint_bytes([runs.size // 2, *runs, *(freqs[freqs > 0] - 1)])


def _table_size(freqs: np.ndarray) -> int:
  """``len(table_bytes(freqs, ...))`` without building it."""
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


def read_table(reader: Reader):
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
