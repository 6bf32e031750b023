"""Byte codings of the export format: masks (bitmap, Rice or rANS-coded gaps), value streams.

Every ``encode_*`` returns ``(meta, data)`` where ``meta`` is a small JSON-able dict recorded
in the manifest; every ``decode_*`` checks what it reads against ``meta`` and raises
``CorruptError`` (a ``ValueError``) on any inconsistency, never returning a wrong array.
Each encoder tries its candidate codings and keeps the smallest.
"""

from __future__ import annotations

import lzma
import zlib

import numpy as np
from numpy.typing import DTypeLike

from jaxprune.export import _gaps, _rans
from jaxprune.export._rans import CorruptError
from jaxprune.quantize import pack_int4, unpack_int4


# LZMA2 with no literal context (lc=lp=pb=0): the byte streams here are i.i.d.-like symbols.
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 0, "lp": 0, "pb": 0}]
COMPRESSIONS = ("best", "fast", "none")


def _compress(data: bytes, codec: str) -> bytes:
  if codec == "zlib":
    return zlib.compress(data, 6)
  if codec == "zlib1":
    return zlib.compress(data, 1)
  if codec == "lzma":
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
  return data


def _decompress(data: bytes, codec: str | None, size: int) -> bytes:
  """Decompresses at most ``size + 1`` bytes (a tampered stream cannot blow up memory)."""
  try:
    if codec == "raw":
      out = data
    elif codec in ("zlib", "zlib1"):
      d = zlib.decompressobj()
      out = d.decompress(data, size + 1)
      if not d.eof:
        raise CorruptError(f"the zlib stream does not end after {size} bytes")
    elif codec == "lzma":
      d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
      out = d.decompress(data, max_length=size + 1)
      if not d.eof and len(out) != size:
        raise CorruptError(f"the lzma stream does not end after {size} bytes")
    else:
      raise CorruptError(f"unknown codec {codec!r}")
  except (zlib.error, lzma.LZMAError, EOFError) as err:
    raise CorruptError(f"the {codec} stream does not decompress ({err})") from None
  if len(out) != size:
    raise CorruptError(f"the {codec} stream holds {len(out)} bytes, expected {size}")
  return out


def _candidates(compression: str) -> tuple[str, ...]:
  return {"best": ("zlib", "lzma", "rans"), "fast": ("zlib1", "rans"), "none": ()}[compression]


def _smallest(data: bytes, compression: str) -> tuple[str, bytes]:
  best_codec, best = "raw", data
  for codec in _candidates(compression):
    if codec != "rans":
      out = _compress(data, codec)
      if len(out) < len(best):
        best_codec, best = codec, out
  return best_codec, best


def coded_size(data) -> float:
  """Bytes of ``data``: bytes, or a list of bytes and ``_rans.Pending`` streams (estimated;
  a rANS estimate is within about 1% of the coded size)."""
  if isinstance(data, bytes):
    return len(data)
  return sum(part.estimate if isinstance(part, _rans.Pending) else len(part) for part in data)


def join_all(datas: list) -> list[bytes]:
  """Each ``data`` as bytes, every pending rANS stream of all of them encoded in one batch."""
  pending = [part for data in datas if isinstance(data, list) for part in data
             if isinstance(part, _rans.Pending)]
  coded = iter(_rans.encode_many(pending))
  return [data if isinstance(data, bytes) else b"".join(
      next(coded) if isinstance(part, _rans.Pending) else part for part in data)
      for data in datas]


def join(data) -> bytes:
  return join_all([data])[0]


def _rans_planes(planes: np.ndarray):
  """Each byte plane (row) as a pending order-0 rANS stream, or raw where that would not be
  smaller: ``(kinds, parts)``."""
  kinds, parts = [], []
  for plane in planes:
    stream = _rans.pending(plane)
    use = stream.estimate < plane.size
    kinds.append("rans" if use else "raw")
    parts.append(stream if use else plane.tobytes())
  return kinds, parts


def _rans_unplane(kinds, data: bytes, planes: int, count: int, rans) -> np.ndarray:
  if not isinstance(kinds, list) or len(kinds) != planes:
    raise CorruptError(f"the manifest lists byte planes {kinds!r}, expected {planes}")
  out, offset = np.empty((planes, count), np.uint8), 0
  for i, kind in enumerate(kinds):
    if kind == "rans":
      out[i], offset = rans(data, count, offset)
    elif kind == "raw" and offset + count <= len(data):
      out[i] = np.frombuffer(data, np.uint8, count, offset)
      offset += count
    else:
      raise CorruptError(f"byte plane {i} ({kind!r}) does not fit the {len(data)}-byte stream")
  if offset != len(data):
    raise CorruptError(f"the rANS planes end at byte {offset} of {len(data)}")
  return out


def encode_values(array: np.ndarray, compression: str = "best"):
  """The bytes of ``array`` (row-major), byte-shuffled when wider than 1 byte, compressed.

  Byte shuffling (byte 0 of every value, then byte 1, ...) groups the sign/exponent bytes of
  floats, which then compress (typically to 0.75-0.8 of float32 kept weights). Candidates:
  raw, zlib/lzma of the shuffled bytes, and an order-0 rANS code of each byte plane
  (``_rans``; planes it cannot shrink stay raw); the smallest is kept. A rANS coding is
  returned as a list of parts with pending streams (see :func:`join_all`), chosen on its
  estimated size.
  """
  a = np.ascontiguousarray(array).reshape(-1)
  itemsize = a.dtype.itemsize
  raw = a.view(np.uint8)
  shuffle = itemsize > 1 and a.size > 1
  planes = raw.reshape(-1, itemsize).T if shuffle else raw.reshape(1, -1)
  codec, data = _smallest(np.ascontiguousarray(planes).tobytes(), compression)
  meta = {"codec": codec, "shuffle": bool(shuffle), "raw_length": int(a.nbytes)}
  if "rans" in _candidates(compression) and a.size:
    kinds, parts = _rans_planes(np.ascontiguousarray(planes))
    if coded_size(parts) < len(data):
      return dict(meta, codec="rans", planes=kinds), parts
  return meta, data


def value_streams(meta: dict, data: bytes, itemsize: int, count: int) -> list:
  """``(offset, count)`` of the rANS streams in a blob of :func:`encode_values` of ``count``
  values of ``itemsize`` bytes (their headers are read, not decoded)."""
  if meta.get("codec") != "rans" or not isinstance(meta.get("planes"), list):
    return []
  per = count if meta.get("shuffle") else count * itemsize
  streams, offset = [], 0
  for kind in meta["planes"]:
    if kind == "rans":
      streams.append((offset, per))
      offset = _rans.stream_end(data, per, offset)
    else:
      offset += per
  return streams


def decode_values(meta: dict, data: bytes, dtype: DTypeLike, count: int,
                  rans=_rans.decode) -> np.ndarray:
  """The inverse of :func:`encode_values`: ``dtype[count]``. ``rans(data, count, offset)``
  decodes a rANS stream (``_rans.decode``, or a look-up of streams decoded beforehand)."""
  dtype = np.dtype(dtype)
  size = count * dtype.itemsize
  if meta.get("raw_length") != size:
    raise CorruptError(f"the manifest says {meta.get('raw_length')} bytes, but {count} values "
                       f"of {dtype} take {size}")
  shuffle = bool(meta.get("shuffle"))
  if meta.get("codec") == "rans":
    planes = dtype.itemsize if shuffle else 1
    raw = _rans_unplane(meta.get("planes"), data, planes, size // planes, rans).reshape(-1)
  else:
    raw = np.frombuffer(_decompress(data, meta.get("codec"), size), np.uint8)
  if shuffle:
    raw = raw.reshape(dtype.itemsize, -1).T
  return np.ascontiguousarray(raw).reshape(-1).view(dtype).copy()


def encode_ints(values: np.ndarray, bits: int, compression: str = "best"):
  """Quantised ``int8`` values: as they are (8 bits), or for ``bits <= 4`` the smaller of the
  values packed two per byte (``pack_int4``; ``"packed": True``) and one rANS symbol each."""
  values = np.ascontiguousarray(values, np.int8).reshape(-1)
  if bits > 4:
    return encode_values(values, compression)
  meta, data = encode_values(np.asarray(pack_int4(values)), compression)
  meta = dict(meta, packed=True)
  if "rans" in _candidates(compression) and values.size:
    stream = _rans.pending(values.view(np.uint8))
    if stream.estimate < coded_size(data):
      meta = {"codec": "rans", "shuffle": False, "raw_length": int(values.size),
              "planes": ["rans"], "packed": False}
      data = [stream]
  return meta, data


def _packed(meta: dict, bits: int, packed_default) -> bool:
  packed = meta.get("packed", packed_default) if bits <= 4 else False
  if not isinstance(packed, bool):
    raise CorruptError(f"bad 'packed' flag {packed!r}")
  return packed


def int_streams(meta: dict, data: bytes, bits: int, count: int, *, packed_default=None):
  """:func:`value_streams` of a blob of :func:`encode_ints`."""
  packed = _packed(meta, bits, packed_default)
  return value_streams(meta, data, 1, -(-count // 2) if packed else count)


def decode_ints(meta: dict, data: bytes, bits: int, count: int, *, packed_default=None,
                rans=_rans.decode):
  """The inverse of :func:`encode_ints`: ``int8[count]`` (range not checked here)."""
  if _packed(meta, bits, packed_default):
    packed = decode_values(meta, data, np.uint8, -(-count // 2), rans)
    return np.asarray(unpack_int4(packed, count))
  return decode_values(meta, data, np.int8, count, rans)


# ------------------------------------------------------------------------------------ masks


def encode_mask(mask: np.ndarray, compression: str = "best"):
  """The smallest of: bitmap (raw, zlib, lzma) and the gaps of the minority positions coded
  with Golomb-Rice or with rANS (``_gaps``).

  At 90% random sparsity the mask's entropy is 0.469 bit per entry; a bitmap costs 1, its
  lzma coding about 0.49, the Rice code of the kept positions' gaps 0.476 and their rANS code
  about 0.47. Structured masks (channels, blocks, N:M) compress best as a bitmap with
  zlib/lzma.
  """
  flat = np.asarray(mask, bool).reshape(-1)
  n, kept = flat.size, int(flat.sum())
  bitmap = np.packbits(flat).tobytes()
  codec, best = _smallest(bitmap, compression)
  meta = {"coding": "bitmap", "codec": codec, "kept": kept}
  if compression != "none" and n:
    invert = kept > n - kept
    positions = np.flatnonzero(~flat if invert else flat).astype(np.int64)
    gaps = np.diff(positions, prepend=-1) - 1
    k, unary_bits, rice = _gaps.rice_encode(gaps)
    if len(rice) < len(best):
      meta = {"coding": "rice", "kept": kept, "invert": bool(invert), "k": int(k),
              "unary_bits": int(unary_bits)}
      best = rice
    if "rans" in _candidates(compression):
      k, parts = _gaps.rans_encode(gaps)
      if coded_size(parts) < len(best):
        return {"coding": "rans", "kept": kept, "invert": bool(invert), "k": int(k)}, parts
  return meta, best


def mask_streams(meta: dict, n: int) -> list:
  """``(offset, count)`` of the rANS stream in a blob of :func:`encode_mask` (if any)."""
  kept, invert = meta.get("kept"), meta.get("invert")
  if meta.get("coding") != "rans" or not isinstance(kept, int) or not 0 <= kept <= n:
    return []
  return [(0, n - kept if invert else kept)]


def decode_mask(meta: dict, data: bytes, n: int, rans=_rans.decode) -> np.ndarray:
  """The inverse of :func:`encode_mask`: ``bool[n]``; checks the kept count."""
  kept = meta.get("kept")
  if not isinstance(kept, int) or not 0 <= kept <= n:
    raise CorruptError(f"the manifest's kept count {kept!r} is not in [0, {n}]")
  coding = meta.get("coding")
  if coding == "bitmap":
    bitmap = np.frombuffer(_decompress(data, meta.get("codec"), (n + 7) // 8), np.uint8)
    flat = np.unpackbits(bitmap, count=n).astype(bool)
  elif coding in ("rice", "rans"):
    invert, k = meta.get("invert"), meta.get("k")
    unary_bits = meta.get("unary_bits") if coding == "rice" else 0
    if not isinstance(invert, bool) or not isinstance(k, int) or not 0 <= k < 63 or not (
        isinstance(unary_bits, int) and unary_bits >= 0):
      raise CorruptError(f"bad {coding} parameters {meta!r}")
    count = n - kept if invert else kept
    if coding == "rice":
      gaps = _gaps.rice_decode(data, count, k, unary_bits)
    else:
      gaps = _gaps.rans_decode(data, count, k, n, rans)
    flat = np.zeros(n, bool)
    flat[_gaps.positions(gaps, n)] = True
    if invert:
      flat = ~flat
  else:
    raise CorruptError(f"unknown mask coding {coding!r}")
  if int(flat.sum()) != kept:
    raise CorruptError(f"the mask keeps {int(flat.sum())} entries, the manifest says {kept}")
  return flat
