"""Every rANS stream of an export file decoded in one batch, before its leaves are decoded.

``_rans.decode_many`` advances the lanes of all streams together, so a file of many leaves
takes as many vectorised steps as its longest stream (at most ``_rans.STEPS``) instead of
their sum. This is only a cache: a stream it does not hold (its blob could not be listed, or
it failed to decode) is decoded on its own where the leaf is decoded, which then raises the
error with the leaf's path.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxprune.export import _codecs, _format, _rans


def _dtype_size(name) -> int:
  if not isinstance(name, str):
    raise TypeError(name)
  return np.dtype(jnp.dtype(name)).itemsize


def _blob_streams(entry: dict, blobs, version: int):
  """``(blob meta, data, [(offset, count), ...])`` for each blob of a leaf entry."""
  kind = entry.get("kind")
  if kind not in ("dense", "sparse", "quantized"):
    return
  n = math.prod(entry["shape"])
  get = lambda name: _format.blob(blobs, entry[name], "", verify=False)
  count = n
  if entry.get("mask") is not None:
    yield entry["mask"], get("mask"), _codecs.mask_streams(entry["mask"], n)
    count = entry["mask"]["kept"]
  itemsize = _dtype_size(entry["dtype"])
  if kind == "dense":
    yield entry["data"], get("data"), _codecs.value_streams(entry["data"], get("data"),
                                                            itemsize, n)
  elif kind == "sparse":
    yield entry["values"], get("values"), _codecs.value_streams(entry["values"], get("values"),
                                                                itemsize, count)
  else:
    data = get("values")
    yield entry["values"], data, _codecs.int_streams(
        entry["values"], data, entry["bits"], count,
        packed_default=True if version == 2 else None)
    grid = math.prod(entry["scale_shape"])
    storage = _dtype_size(entry.get("scale_storage", "float32"))
    yield entry["scale"], get("scale"), _codecs.value_streams(entry["scale"], get("scale"),
                                                              storage, grid)
    if entry.get("zero") is not None:
      yield entry["zero"], get("zero"), _codecs.value_streams(entry["zero"], get("zero"), 1,
                                                              grid)


class Streams:
  """Decoded rANS streams by blob (its offset in the file) and ``(offset, count)``."""

  def __init__(self, found: dict):
    self.found = found

  @classmethod
  def prefetch(cls, entries, blobs, version: int) -> Streams:
    requests, keys = [], []
    for entry in entries:
      try:
        for meta, data, streams in _blob_streams(entry, blobs, version):
          for offset, count in streams:
            requests.append((data, count, offset))
            keys.append((meta["offset"], offset, count))
      except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        continue  # decoded (and reported) leaf by leaf
    found: dict = {}
    for (blob, offset, count), result in zip(keys, _rans.decode_many(requests)):
      if not isinstance(result, _rans.CorruptError):
        found.setdefault(blob, {})[(offset, count)] = result
    return cls(found)

  def decoder(self, meta):
    """``decode(data, count, offset)`` for the blob ``meta``: a look-up, else ``_rans``."""
    found = self.found.get(meta.get("offset")) if isinstance(meta, dict) else None
    if not found:
      return _rans.decode

    def decode(data, count: int, offset: int = 0):
      hit = found.get((offset, count))
      return hit if hit is not None else _rans.decode(data, count, offset)
    return decode
