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
``lanes``, and ``lanes`` must be at least ``count / STEPS`` (2048; the encoder uses
``ceil(count / 2048)`` lanes): decoding takes at most 2048 vectorised steps.
:func:`decode_many` decodes many streams in one loop (all their lanes side by side), so a
file of many streams also takes at most 2048 steps. Each lane's final state costs 4 bytes,
about 2 to 3 more than the information it carries.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

from jaxprune.export._rans_tables import (  # CorruptError is also used as _rans.CorruptError
    CorruptError, Reader, best_table, read_table, table_bytes, varint_bytes)


LOW = 1 << 16  # the lowest state; states are in [LOW, 2**32)
STEPS = 2048  # a stream has ceil(count / STEPS) lanes (or 1 for one symbol): <= STEPS steps
_U64 = np.uint64


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


class Pending(NamedTuple):
  """A stream to encode later (with others, by :func:`encode_many`): its symbols and plan."""
  symbols: np.ndarray
  planned: tuple

  @property
  def estimate(self) -> float:
    return self.planned[2]


def pending(symbols: np.ndarray) -> Pending:
  symbols = np.ascontiguousarray(symbols, np.uint8).reshape(-1)
  return Pending(symbols, plan(symbols) if symbols.size else (1, None, 0.0))


def encode(symbols: np.ndarray, planned: tuple | None = None) -> bytes:
  """The rANS stream of ``symbols`` (``uint8``); see the module docstring for the layout.

  ``planned`` is :func:`plan` of the same symbols, when it was already computed.
  """
  symbols = np.ascontiguousarray(symbols, np.uint8).reshape(-1)
  if planned is None and symbols.size:
    planned = plan(symbols)
  return encode_many([Pending(symbols, planned or (1, None, 0.0))])[0]


def encode_many(streams: list[Pending]) -> list[bytes]:
  """The rANS stream of each :class:`Pending`, all lanes of all streams in one loop (as many
  steps as the longest stream); each stream is byte for byte what :func:`encode` gives."""
  out: list = [b""] * len(streams)
  runs = []  # (index, symbols padded to (steps, lanes), prob_bits, freqs)
  for i, (symbols, (prob_bits, freqs, _)) in enumerate(streams):
    if symbols.size == 0:
      continue
    if (freqs > 0).sum() == 1:  # one symbol: the state never moves, no words
      out[i] = _header(symbols, prob_bits, freqs, 1, 0) + np.full(1, LOW, "<u4").tobytes()
      continue
    lanes = lanes_for(symbols.size)
    steps = -(-symbols.size // lanes)
    pad = np.full(steps * lanes - symbols.size, np.argmax(freqs), np.uint8)
    runs.append((i, np.concatenate([symbols, pad]).reshape(steps, lanes), prob_bits, freqs))
  if not runs:
    return out
  runs.sort(key=lambda run: -run[1].shape[0])  # longest first: running lanes are a prefix
  steps = np.array([run[1].shape[0] for run in runs])
  lanes = np.array([run[1].shape[1] for run in runs])
  first = np.cumsum(lanes) - lanes
  f = np.ones((int(steps[0]), int(lanes.sum())), np.uint32)
  c = np.zeros(f.shape, np.uint32)
  for (_, padded, _, freqs), start in zip(runs, first):
    starts = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    f[:padded.shape[0], start:start + padded.shape[1]] = freqs[padded]
    c[:padded.shape[0], start:start + padded.shape[1]] = starts[padded]
  bits = np.repeat([run[2] for run in runs], lanes).astype(_U64)
  shift = _U64(32) - bits  # a state takes frequency f while it is below f << (32 - bits)
  running = np.cumsum(np.concatenate([[0], lanes]))[
      np.searchsorted(-steps, -np.arange(int(steps[0])), side="left")]
  x = np.full(f.shape[1], LOW, _U64)
  renorm = np.zeros(f.shape, bool)
  low = np.empty(f.shape, np.uint16)
  for t in range(int(steps[0]) - 1, -1, -1):
    active = int(running[t])
    xt = x[:active]
    need = np.greater_equal(xt >> shift[:active], f[t, :active], out=renorm[t, :active])
    low[t, :active] = xt  # (an unsafe cast: keeps the low 16 bits)
    xt = np.where(need, xt >> _U64(16), xt)
    q, r = np.divmod(xt, f[t, :active])
    x[:active] = (q << bits[:active]) + r + c[t, :active]
  for (i, padded, prob_bits, freqs), start in zip(runs, first):
    mine = (slice(0, padded.shape[0]), slice(start, start + padded.shape[1]))
    words = low[mine][renorm[mine]]  # step by step, lanes in order: as decoding reads them
    out[i] = (_header(streams[i].symbols, prob_bits, freqs, padded.shape[1], words.size)
              + x[mine[1]].astype("<u4").tobytes() + words.astype("<u2").tobytes())
  return out


def _header(symbols, prob_bits, freqs, lanes: int, words: int) -> bytes:
  crc = np.array([zlib.crc32(symbols.tobytes())], "<u4").tobytes()
  return table_bytes(freqs, prob_bits) + varint_bytes([lanes, words]) + crc


class _Stream(NamedTuple):
  prob_bits: int
  freqs: np.ndarray  # int64[256]
  states: np.ndarray  # uint64[lanes]
  words: np.ndarray  # uint64[W]
  crc: int
  count: int
  end: int  # offset just after the stream


def _parse(data, count: int, offset: int) -> _Stream:
  """The checked header, states and words of a stream of ``count >= 1`` symbols."""
  reader = Reader(data, offset)
  prob_bits, freqs = read_table(reader)
  lanes = reader.varint(count)
  n_words = reader.varint(count)
  one_symbol = bool((freqs == 1 << prob_bits).any())
  if lanes < 1 or not one_symbol and -(-count // lanes) > STEPS:
    raise CorruptError(f"the rANS stream has {lanes} lanes for {count} symbols")
  crc = int(np.frombuffer(reader.take(4), "<u4")[0])
  states = np.frombuffer(reader.take(4 * lanes), "<u4").astype(_U64)
  words = np.frombuffer(reader.take(2 * n_words), "<u2").astype(_U64)
  if (states < LOW).any():
    raise CorruptError("a rANS lane state is below 2**16")
  if one_symbol and (lanes != 1 or n_words or (states != LOW).any()):
    raise CorruptError("a one-symbol rANS stream holds words or moved states")
  return _Stream(prob_bits, freqs, states, words, crc, count, reader.pos)


def stream_end(data, count: int, offset: int = 0) -> int:
  """Where the stream of ``count`` symbols at ``data[offset:]`` ends (its header only)."""
  return offset if count == 0 else _parse(data, count, offset).end


def decode(data, count: int, offset: int = 0) -> tuple[np.ndarray, int]:
  """``(uint8[count], end offset)``: the symbols of the stream at ``data[offset:]``.

  Raises:
    CorruptError: the stream is malformed, truncated or does not end where it should.
  """
  out = decode_many([(data, count, offset)])[0]
  if isinstance(out, CorruptError):
    raise out
  return out


def decode_many(requests) -> list:
  """:func:`decode` of every ``(data, count, offset)``, all lanes of all streams advancing
  together (as many steps as the longest stream, not their sum); a stream that does not
  decode gives its ``CorruptError`` in place of ``(symbols, end)``."""
  results: list = [None] * len(requests)
  streams = {}
  for i, (data, count, offset) in enumerate(requests):
    if count == 0:
      results[i] = (np.zeros(0, np.uint8), offset)
      continue
    try:
      stream = _parse(data, count, offset)
    except CorruptError as err:
      results[i] = err
      continue
    if stream.states.size == 1 and stream.freqs.max() == 1 << stream.prob_bits:
      results[i] = _checked(stream, np.full(count, int(np.argmax(stream.freqs)), np.uint8))
    else:
      streams[i] = stream
  decoded = _decode_lanes(list(streams.values()))
  for (i, stream), out in zip(streams.items(), decoded):
    results[i] = out if isinstance(out, CorruptError) else _checked(stream, out)
  return results


def _checked(stream: _Stream, out: np.ndarray):
  if zlib.crc32(out.tobytes()) != stream.crc:
    return CorruptError("the symbols decoded from the rANS stream fail its CRC-32")
  return out, stream.end


def _decode_lanes(streams: list[_Stream]) -> list:
  """The symbols of each stream (or a CorruptError), every lane of every stream in one loop.

  Streams are laid out longest first and each stream's lanes side by side, so the lanes still
  running at step ``t`` are a prefix; a step's renormalisation words are taken, per stream, in
  lane order from that stream's words.
  """
  if not streams:
    return []
  order = sorted(range(len(streams)), key=lambda j: -_steps(streams[j]))
  streams = [streams[j] for j in order]
  lanes = np.array([s.states.size for s in streams])
  steps = np.array([_steps(s) for s in streams])
  tables = [_slot_tables(s) for s in streams]
  sizes = np.array([1 << s.prob_bits for s in streams])
  lane_stream = np.repeat(np.arange(len(streams)), lanes)
  lane_base = np.repeat(np.cumsum(sizes) - sizes, lanes).astype(_U64)
  lane_mask = np.repeat(sizes - 1, lanes).astype(_U64)
  lane_bits = np.repeat([s.prob_bits for s in streams], lanes).astype(_U64)
  symbol, freq, bias = (np.concatenate([t[k] for t in tables]) for k in range(3))
  words = np.concatenate([s.words for s in streams] + [np.zeros(1, _U64)])  # + a sentinel
  word_count = np.array([s.words.size for s in streams], np.int64)
  word_end = np.cumsum(word_count)
  word_pos = word_end - word_count
  x = np.concatenate([s.states for s in streams])
  # lanes still running at step t: those of the streams with more than t steps (a prefix)
  running = np.cumsum(np.concatenate([[0], lanes]))[
      np.searchsorted(-steps, -np.arange(int(steps[0])), side="left")]
  out = np.empty((int(steps[0]), x.size), np.uint8)
  single = len(streams) == 1
  for t, active in enumerate(running.tolist()):
    xs = x[:active]
    slot = xs & lane_mask[:active]
    slot += lane_base[:active]
    symbol.take(slot, out=out[t, :active])
    xs >>= lane_bits[:active]
    xs *= freq[slot]
    xs += bias[slot]
    need = (xs < LOW).nonzero()[0]
    if need.size:
      if single:
        index = word_pos[0] + np.arange(need.size)
        word_pos[0] += need.size
      else:  # each stream's needing lanes are side by side: rank them within their stream
        owner = lane_stream[need]
        index = word_pos[owner] + (np.arange(need.size) - np.searchsorted(owner, owner))
        word_pos += np.bincount(owner, minlength=len(streams))
      np.minimum(index, words.size - 1, out=index)  # an overrun reads the sentinel; see below
      xs[need] = (xs[need] << _U64(16)) | words[index]
  results: list = [None] * len(streams)
  first = np.cumsum(lanes) - lanes
  for j, s in enumerate(streams):
    mine = slice(first[j], first[j] + lanes[j])
    symbols = out[:steps[j], mine].reshape(-1)
    if word_pos[j] > word_end[j]:
      results[order[j]] = CorruptError("the rANS stream runs out of words")
    elif word_pos[j] < word_end[j] or (x[mine] != LOW).any():
      results[order[j]] = CorruptError("the rANS stream does not end in its initial state")
    elif (symbols[s.count:] != np.argmax(s.freqs)).any():
      results[order[j]] = CorruptError("the rANS stream's padding is not its most frequent "
                                       "symbol")
    else:
      results[order[j]] = symbols[:s.count]
  return results


def _steps(stream: _Stream) -> int:
  return -(-stream.count // stream.states.size)


def _slot_tables(stream: _Stream):
  """Per slot of ``[0, M)``: its symbol, the symbol's frequency and ``slot - start``."""
  freqs = stream.freqs
  symbol = np.repeat(np.arange(256, dtype=np.uint8), freqs)
  starts = np.concatenate([[0], np.cumsum(freqs)[:-1]])
  bias = (np.arange(1 << stream.prob_bits) - starts[symbol]).astype(_U64)
  return symbol, freqs.astype(_U64)[symbol], bias
