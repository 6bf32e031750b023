"""Tests of the export's entropy coder (order-0 rANS) and of the codings built on it."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune.export import _codecs, _gaps, _rans, _rans_tables
from jaxprune.export._rans import CorruptError


def coded(meta_and_data):
  """A codec's ``(meta, data)`` with its pending rANS streams encoded."""
  meta, data = meta_and_data
  return meta, _codecs.join(data)


def entropy_bytes(symbols) -> float:
  """Order-0 entropy of a symbol array in bytes (independent reference)."""
  _, counts = np.unique(np.asarray(symbols), return_counts=True)
  p = counts / counts.sum()
  return float(-(counts * np.log2(p)).sum() / 8)


def draw_symbols(kind: str, n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "one":
    return np.full(n, rng.integers(256), np.uint8)
  if kind == "all256":
    s = rng.integers(0, 256, n)
    s[:min(n, 256)] = np.arange(min(n, 256))  # every symbol occurs once n >= 256
    return s.astype(np.uint8)
  if kind == "skewed":  # one symbol with probability ~0.999, a few rare ones
    return np.where(rng.random(n) < 0.999, 3, rng.integers(0, 256, n)).astype(np.uint8)
  if kind == "geometric":
    return np.minimum(rng.geometric(rng.uniform(0.02, 0.9), n) - 1, 255).astype(np.uint8)
  weights = rng.dirichlet(np.full(rng.integers(2, 257), 0.3))  # a random distribution
  symbols = rng.choice(256, size=weights.size, replace=False)
  return symbols[rng.choice(weights.size, size=n, p=weights)].astype(np.uint8)


KINDS = ["one", "all256", "skewed", "geometric", "random"]


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), n=st.integers(0, 5000), seed=st.integers(0, 2**32 - 1))
def test_round_trip_any_distribution(kind, n, seed):
  symbols = draw_symbols(kind, n, seed)
  data = _rans.encode(symbols)
  out, end = _rans.decode(data, n)
  assert end == len(data) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, symbols)
  if n == 0:
    assert data == b""


@pytest.mark.parametrize("kind", KINDS)
def test_size_is_entropy_plus_a_small_overhead(kind):
  n = 200_000
  symbols = draw_symbols(kind, n, 7)
  data = _rans.encode(symbols)
  table = 2 + 32 + 3 * 256  # at most: header, bitmap, 3-byte varints
  lanes = 4 * _rans.lanes_for(n) + 8
  assert len(data) <= 1.003 * entropy_bytes(symbols) + table + lanes + 16, (
      len(data), entropy_bytes(symbols))
  assert abs(_rans.estimate(symbols) - len(data)) <= 0.01 * len(data) + lanes + 64


def test_streams_concatenate_and_decode_from_an_offset():
  a, b = draw_symbols("random", 3000, 1), draw_symbols("geometric", 5000, 2)
  data = b"xy" + _rans.encode(a) + _rans.encode(b)
  out_a, end = _rans.decode(data, a.size, 2)
  out_b, end = _rans.decode(data, b.size, end)
  assert end == len(data)
  np.testing.assert_array_equal(out_a, a)
  np.testing.assert_array_equal(out_b, b)


def test_quantized_freqs_sum_and_keep_every_symbol():
  counts = np.zeros(256, np.int64)
  counts[:200] = 1
  counts[200] = 10**9  # rounding makes most of them 0 before the fix-up
  for bits in (8, 12, 16):
    f = _rans_tables.quantized_freqs(counts, bits)
    assert f.sum() == 1 << bits and ((f > 0) == (counts > 0)).all()


# ------------------------------------------------------------------------------ corruption


def _one_of(call):
  """Runs ``call``: it may raise CorruptError; any other exception fails the test."""
  try:
    return call()
  except CorruptError:
    return None


def test_every_flipped_byte_and_every_truncation_is_detected():
  symbols = draw_symbols("random", 150, 3)
  data = _rans.encode(symbols)
  for i in range(len(data)):
    damaged = bytearray(data)
    damaged[i] ^= 0x5A
    with pytest.raises(CorruptError):
      _rans.decode(bytes(damaged), symbols.size)
  for cut in range(len(data)):
    with pytest.raises(CorruptError):
      _rans.decode(data[:cut], symbols.size)
  with pytest.raises(CorruptError, match="does not end|lanes"):
    _rans.decode(data, symbols.size - 1)  # a wrong count


def _stream(prob_bits, runs, freqs, lanes, words, states):
  """A stream built by hand: runs are (skip, length - 1) pairs (see the _rans docstring)."""
  varints = lambda values: bytes(_rans_tables.varint_bytes(values))
  return (bytes([prob_bits]) + varints([len(runs), *np.ravel(runs).tolist()])
          + varints([f - 1 for f in freqs]) + varints([lanes, words]) + bytes(4)
          + np.asarray(states, "<u4").tobytes())


@pytest.mark.parametrize("data,message", [
    (_stream(0, [(0, 1)], [1, 1], 1, 0, [1 << 16]), "prob_bits"),
    (_stream(17, [(0, 1)], [1, 1], 1, 0, [1 << 16]), "prob_bits"),
    (_stream(4, [], [], 1, 0, [1 << 16]), "no symbol"),
    (_stream(4, [(250, 9)], [2] * 8, 1, 0, [1 << 16]), "beyond 255"),
    (_stream(4, [(0, 1)], [8, 9], 1, 0, [1 << 16]), "sum to 17"),
    (_stream(4, [(0, 1)], [16, 1], 1, 0, [1 << 16]), "sum to 17"),
    (_stream(4, [(0, 1)], [17, 1], 1, 0, [1 << 16]), "count 16 > 15"),
    (_stream(4, [(0, 1)], [8], 1, 0, [1 << 16]), "sum to 10"),  # lanes read as a frequency
    (_stream(4, [(0, 1)], [8, 8], 0, 0, []), "lanes"),
    (_stream(4, [(0, 1)], [8, 8], 9, 0, [1 << 16] * 9), "count"),  # more lanes than symbols
    (_stream(4, [(0, 1)], [8, 8], 1, 9, [1 << 16]), "count"),  # more words than symbols
    (_stream(4, [(0, 1)], [8, 8], 1, 0, [5]), "below"),
    (_stream(4, [(0, 1)], [8, 8], 1, 0, [1 << 16]), "runs out of words"),
    (_stream(4, [(3, 0)], [16], 1, 0, [1 << 17]), "one-symbol"),
    (_stream(4, [(3, 0)], [16], 1, 0, [1 << 16]), "CRC"),  # decodes eight 3s, checksum 0
], ids=lambda v: v if isinstance(v, str) else "")
def test_tampered_tables_and_headers_raise_corrupt_error(data, message):
  with pytest.raises(CorruptError, match=message):
    _rans.decode(data, 8)


def test_a_lane_count_needing_too_many_steps_is_refused():
  data = _stream(4, [(0, 1)], [8, 8], 1, 0, [1 << 16])
  with pytest.raises(CorruptError, match="lanes"):
    _rans.decode(data, _rans.STEPS + 1)  # one lane for more steps than allowed


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=200), count=st.integers(0, 300))
def test_random_bytes_raise_corrupt_error_or_decode_to_the_right_size(data, count):
  out = _one_of(lambda: _rans.decode(data, count))
  if out is not None:
    assert out[0].shape == (count,) and out[0].dtype == np.uint8


# --------------------------------------------------------------------- codings built on rANS


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 8000), density=st.sampled_from([0.0005, 0.01, 0.1, 0.3, 0.7, 0.95]),
       seed=st.integers(0, 2**32 - 1))
def test_gap_codings_round_trip(n, density, seed):
  rng = np.random.default_rng(seed)
  mask = rng.random(n) < density
  positions = np.flatnonzero(mask)
  gaps = np.diff(positions, prepend=-1) - 1
  k, data = coded(_gaps.rans_encode(gaps))
  np.testing.assert_array_equal(_gaps.positions(_gaps.rans_decode(data, gaps.size, k, n), n),
                                positions)
  meta, blob = coded(_codecs.encode_mask(mask))
  np.testing.assert_array_equal(_codecs.decode_mask(meta, blob, n), mask)


def test_escaped_gaps_and_varints():
  gaps = np.array([0, 254, 255, 256, 10**6, 3, 2**40], np.int64)
  n = int(gaps.sum() + gaps.size)
  k, data = coded(_gaps.rans_encode(gaps))  # the k it picks
  np.testing.assert_array_equal(_gaps.rans_decode(data, gaps.size, k, n), gaps)
  for k in (0, 3):  # small k: quotients from 255 up are escaped, their rest in varints
    symbols, escapes = _gaps._rans_parts(gaps, k)
    assert escapes.size >= 2
    data = _rans.encode(symbols) + _gaps._low_bits(gaps, k) + _gaps.varints(escapes)
    np.testing.assert_array_equal(_gaps.rans_decode(data, gaps.size, k, n), gaps)
  values = np.array([0, 1, 127, 128, 300, 2**40, 2**63 - 1], np.uint64)
  leb = np.frombuffer(_gaps.varints(values), np.uint8)
  assert leb.size == 1 + 1 + 1 + 2 + 2 + 6 + 9
  np.testing.assert_array_equal(_gaps.read_varints(leb, values.size), values.astype(np.int64))
  for bad, count in ((leb[:-1], values.size), (leb, values.size - 1),
                     (np.full(10, 0x80, np.uint8), 1), (np.array([0xFF] * 9 + [1], np.uint8), 1)):
    with pytest.raises(CorruptError):
      _gaps.read_varints(bad, count)


def test_random_90_percent_masks_cost_near_their_entropy():
  rng = np.random.default_rng(0)
  n = 1 << 18
  mask = rng.random(n) < 0.1
  meta, data = coded(_codecs.encode_mask(mask))
  p = mask.mean()
  entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
  assert meta["coding"] == "rans" and 8 * len(data) / n < 1.01 * entropy
  gaps = np.diff(np.flatnonzero(mask), prepend=-1) - 1
  assert len(data) < 0.995 * len(_gaps.rice_encode(gaps)[2])  # the code it replaces


def _coded_samples():
  rng = np.random.default_rng(5)
  floats = (rng.standard_normal(160) * 3).astype(np.float32)  # rANS on the high byte plane
  ints4 = (rng.geometric(0.6, 300) * rng.choice([-1, 1], 300)).clip(-8, 7).astype(np.int8)
  mask = np.zeros(2000, bool)
  mask[np.cumsum(rng.integers(4, 7, 400)) % 2000] = True
  out = [("values", coded(_codecs.encode_values(floats)), (np.float32, floats.size), floats),
         ("ints", coded(_codecs.encode_ints(ints4, 4)), (4, ints4.size), ints4),
         ("mask", coded(_codecs.encode_mask(mask)), (mask.size,), mask)]
  for name, (meta, _), _, _ in out:
    assert meta.get("codec") == "rans" or meta.get("coding") == "rans", (name, meta)
  return out


def _decode(name, meta, data, args):
  if name == "values":
    return _codecs.decode_values(meta, data, *args)
  if name == "ints":
    return _codecs.decode_ints(meta, data, *args)
  return _codecs.decode_mask(meta, data, *args)


def test_rans_codings_round_trip_and_every_truncation_is_detected():
  for name, (meta, data), args, expected in _coded_samples():
    np.testing.assert_array_equal(_decode(name, meta, data, args), expected)
    for cut in range(len(data)):
      with pytest.raises(CorruptError):
        _decode(name, meta, data[:cut], args)


def test_flipped_bytes_in_rans_codings_never_crash():
  """Without the file's checksums a flip may go unnoticed in raw bytes, but decoding raises
  CorruptError or returns an array of the right shape: never an IndexError or a hang."""
  for name, (meta, data), args, expected in _coded_samples():
    caught = 0
    for i in range(0, len(data), 4):
      damaged = bytearray(data)
      damaged[i] ^= 0x41
      out = _one_of(lambda: _decode(name, meta, bytes(damaged), args))
      caught += out is None
      if out is not None:
        assert out.shape == expected.shape and out.dtype == expected.dtype
    assert caught > 0


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 5000), st.integers(0, 2**32 - 1)),
                min_size=1, max_size=5),
       st.integers(-1, 4))
def test_decoding_many_streams_at_once_matches_one_by_one(specs, damaged):
  """Streams of any lengths, lane counts and tables decode together; a damaged stream gives
  its CorruptError without disturbing the others."""
  symbols = [draw_symbols(kind, n, seed) for kind, n, seed in specs]
  data = [b"pre" + _rans.encode(s) for s in symbols]
  if 0 <= damaged < len(data) and symbols[damaged].size:
    data[damaged] = data[damaged][:-1]  # truncated: runs out of words or states
  results = _rans.decode_many([(d, s.size, 3) for d, s in zip(data, symbols)])
  for i, (d, s, out) in enumerate(zip(data, symbols, results)):
    if i == damaged and s.size:
      assert isinstance(out, CorruptError)
    else:
      assert out[1] == len(d)
      np.testing.assert_array_equal(out[0], s)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 5000), st.integers(0, 2**32 - 1)),
                min_size=1, max_size=5))
def test_encoding_many_streams_at_once_gives_the_same_bytes(specs):
  symbols = [draw_symbols(kind, n, seed) for kind, n, seed in specs]
  together = _rans.encode_many([_rans.pending(s) for s in symbols])
  for s, data in zip(symbols, together):
    assert data == _rans.encode(s)
    np.testing.assert_array_equal(_rans.decode(data, s.size)[0], s)
