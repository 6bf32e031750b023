"""``export.load``: every byte and every manifest entry checked before an array is returned."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import quantize as _q
from jaxprune.core import at_path, describe, is_array, listing
from jaxprune.export import _codecs, _format
from jaxprune.export._codecs import CorruptError
from jaxprune.export._format import ExportError
from jaxprune.export._io import key_code
from jaxprune.export._streams import Streams as _Streams

_tree = jax.tree_util


def _walk(node, keys, found: dict, where: str):
  """Rebuilds plain containers from the manifest's tree; records ``keys -> leaf index``."""
  bad = ExportError(f"{where}: the manifest's tree is malformed at {at_path(_path(keys))}; the "
                    "file is corrupted.")
  if not isinstance(node, dict) or len(node) != 1:
    raise bad
  (kind, body), = node.items()
  if kind == "none":
    return None
  if kind == "leaf":
    if not isinstance(body, int) or isinstance(body, bool) or keys in found:
      raise bad
    found[keys] = body
    return _Leaf(body)
  if kind in ("list", "tuple") and isinstance(body, list):
    children = [_walk(c, keys + (("i", i),), found, where) for i, c in enumerate(body)]
    return children if kind == "list" else tuple(children)
  if kind == "dict" and isinstance(body, list):
    out = {}
    for item in body:
      if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
              and len(item[0]) == 2):
        raise bad
      (tag, key), child = item
      if not ((tag == "s" and isinstance(key, str)) or (tag == "i" and isinstance(key, int))):
        raise bad
      if key in out:
        raise bad
      out[key] = _walk(child, keys + ((tag, key),), found, where)
    return out
  raise bad


class _Leaf:
  def __init__(self, index):
    self.index = index


def _path(keys) -> str:
  return "/".join(str(v) for _, v in keys)


def _dtype(name, where):
  try:
    if not isinstance(name, str):  # jnp.dtype(None) is the default float dtype
      raise TypeError(name)
    dtype = np.dtype(jnp.dtype(name))
  except (TypeError, ValueError):
    raise ExportError(f"{where}: unknown dtype {name!r} in the manifest; corrupted.") from None
  return dtype


def _float_dtype(name, where):
  dtype = _dtype(name, where)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ExportError(f"{where}: scale dtype {name!r} is not a float dtype; corrupted.")
  return dtype


def _shape(shape, where):
  if not isinstance(shape, list) or not all(
      isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
    raise ExportError(f"{where}: bad shape {shape!r} in the manifest; corrupted.")
  return tuple(shape)


def _jax_can_hold(dtype) -> bool:
  """False for 64-bit dtypes when x64 is off (they stay numpy arrays: exact, on the host)."""
  return jax.dtypes.canonicalize_dtype(dtype) == dtype


def _decode(entry, blobs, where, version, streams: _Streams):
  """``(array or QuantizedLeaf or scalar, mask or None)`` of one manifest entry (numpy)."""
  if not isinstance(entry, dict):
    raise ExportError(f"{where}: the manifest entry is {entry!r}; corrupted.")
  kind = entry.get("kind")
  get = lambda name: _format.blob(blobs, entry.get(name), f"{where} ({name})", verify=False)
  rans = lambda name: streams.decoder(entry.get(name))
  if kind == "scalar":
    kinds = {"float": float.fromhex, "int": int, "bool": lambda v: v == "True"}
    if entry.get("type") not in kinds or not isinstance(entry.get("value"), str):
      raise ExportError(f"{where}: bad scalar entry {entry!r}; corrupted.")
    return kinds[entry["type"]](entry["value"]), None
  if kind not in ("dense", "sparse", "quantized"):
    raise ExportError(f"{where}: unknown leaf kind {kind!r} in the manifest; corrupted.")
  dtype, shape = _dtype(entry.get("dtype"), where), _shape(entry.get("shape"), where)
  n = math.prod(shape)
  if kind == "dense":
    return _codecs.decode_values(entry["data"], get("data"), dtype, n,
                                 rans("data")).reshape(shape), None
  mask = None
  if kind == "sparse" or entry.get("mask") is not None:
    mask = _codecs.decode_mask(entry["mask"], get("mask"), n, rans("mask"))
  if kind == "sparse":
    assert mask is not None
    dense = np.zeros(n, dtype)
    dense[mask] = _codecs.decode_values(entry["values"], get("values"), dtype, int(mask.sum()),
                                        rans("values"))
    return dense.reshape(shape), mask.reshape(shape)
  return _quantized(entry, get, rans, dtype, shape, mask, where, version)


def _quantized(entry, get, rans, dtype, shape, mask, where, version):
  bits = entry.get("bits")
  if not isinstance(bits, int) or not 2 <= bits <= 8:
    raise ExportError(f"{where}: bad bit width {bits!r} in the manifest; corrupted.")
  grid = _shape(entry.get("scale_shape"), where)
  if len(grid) != len(shape) or any(g == 0 and s or g and s % g for g, s in zip(grid, shape)):
    raise ExportError(f"{where}: scale shape {grid} does not tile the shape {shape}; corrupted.")
  count = math.prod(shape) if mask is None else int(mask.sum())
  kept = _codecs.decode_ints(entry["values"], get("values"), bits, count,
                             packed_default=True if version == 2 else None, rans=rans("values"))
  if kept.size and (kept.min() < -(2 ** (bits - 1)) or kept.max() > 2 ** (bits - 1) - 1):
    raise ExportError(f"{where}: quantised values out of range for {bits} bits; corrupted.")
  v2 = "float32" if version == 2 else None  # version 2 stored float32 scales only
  scale_dtype = _float_dtype(entry.get("scale_dtype", v2), where)
  storage = _float_dtype(entry.get("scale_storage", v2), where)
  scale = _codecs.decode_values(entry["scale"], get("scale"), storage, math.prod(grid),
                                rans("scale")).reshape(grid).astype(scale_dtype)
  zero = None
  if entry.get("zero") is not None:
    zero = _codecs.decode_values(entry["zero"], get("zero"), np.int8, math.prod(grid),
                                 rans("zero")).reshape(grid)
  if mask is None:
    values = kept.reshape(shape)
  else:
    full = np.zeros(shape, np.int8)
    if zero is not None:  # pruned entries hold the zero point: they dequantise to exactly 0
      full = zero
      for ax, (s, g) in enumerate(zip(shape, grid)):
        full = np.repeat(full, s // g if g else 0, axis=ax)
    flat = np.array(full, np.int8).reshape(-1)
    flat[mask] = kept
    values = flat.reshape(shape)
  leaf = _q.QuantizedLeaf(values=values, scale=scale, zero=zero, bits=bits, dtype=dtype)
  return leaf, None if mask is None else mask.reshape(shape)


def _device(x, like=None):
  """A numpy leaf as a jax array (on ``like``'s sharding where it has one)."""
  if x is None or isinstance(x, (bool, int, float)):
    return x
  sharding = getattr(like, "sharding", None)
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.device_put(x, sharding)
  return jnp.asarray(x)


def _finish(x, mask, like, quantized: bool, where):
  if _q.is_quantized(x):
    if not _jax_can_hold(np.dtype(x.dtype)):
      raise ValueError(f"{where}: the quantised leaf dequantises to {x.dtype}, which needs "
                       "jax.config.update('jax_enable_x64', True).")
    leaf = jax.tree.map(jnp.asarray, x)
    x = leaf if quantized else _device(np.asarray(_q.dequantize(leaf)), like)
  elif isinstance(x, np.ndarray) and _jax_can_hold(x.dtype):
    x = _device(x, like)
  return x, _device(mask, like)


def load(path, target=None, *, quantized: bool = False, verify: bool = True):
  """Loads a file written by :func:`save`; returns ``(params, masks)``.

  Float leaves come back bit-exact (pruned entries +0) as jax arrays (64-bit ones as numpy
  arrays unless ``jax_enable_x64`` is on, so that nothing is rounded); quantised leaves come back
  dequantised (``jaxprune.quantize.dequantize``: pruned entries exactly 0), or, with
  ``quantized=True``, as the :class:`jaxprune.quantize.QuantizedLeaf` that was saved (pruned
  values at the zero point). Masks are bool arrays where a mask was saved, ``None`` elsewhere.
  Every check of the format (``jaxprune/export/_format.py``) runs first: a truncated,
  corrupted or edited file raises a ``ValueError`` saying so, never returns wrong arrays.

  Args:
    path: the file.
    target: optional pytree like the saved params (concrete arrays or
      ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape``): gives the container types
      (NamedTuples, nnx/flax containers) and the shardings of the returned arrays, and is
      checked against the file (same leaves, shapes and dtypes). Without it containers come
      back as dicts, lists and tuples.
    quantized: return quantised leaves as ``QuantizedLeaf`` instead of dequantising them.
    verify: check every blob's SHA-256 (the manifest's checksum is always checked).

  >>> import tempfile, jax, numpy as np
  >>> from jaxprune.export import save
  >>> d = tempfile.mkdtemp()
  >>> params = (np.ones((2, 2), np.float32), np.ones(2, np.float32))
  >>> _ = save(d + "/m", params, (np.eye(2, dtype=bool), None))
  >>> p, m = load(d + "/m", target=jax.eval_shape(lambda: params))
  >>> type(p).__name__, p[0].tolist(), m[1]
  ('tuple', [[1.0, 0.0], [0.0, 1.0]], None)
  """
  where = f"export.load({str(path)!r})"
  manifest, blobs = _format.read(path)
  found: dict = {}
  skeleton = _walk(manifest.get("tree"), (), found, where)
  entries = manifest.get("leaves")
  if not isinstance(entries, list) or sorted(found.values()) != list(range(len(entries))):
    raise ExportError(f"{where}: the manifest's tree and leaf list do not match; corrupted.")
  _check_blob_layout(entries, len(blobs), where)
  if verify:  # every checksum before any decoding: a damaged file fails fast
    for keys, i in found.items():
      _verify_blobs(entries[i], blobs, f"{where} at {at_path(_path(keys))}")

  streams = _Streams.prefetch(entries, blobs, manifest["version"])

  def decode(keys):
    at = f"{where} at {at_path(_path(keys))}"
    try:
      return _decode(entries[found[keys]], blobs, at, manifest["version"], streams)
    except CorruptError as err:
      raise ExportError(f"{at}: {err}; the file is corrupted.") from None
    except (KeyError, TypeError, IndexError, AttributeError) as err:
      raise ExportError(f"{at}: the manifest entry is malformed ({err!r}); corrupted.") from None

  if target is None:
    def build(node):
      if isinstance(node, _Leaf):
        keys = index_keys[node.index]
        x, m = decode(keys)
        return _finish(x, m, None, quantized, f"{where} at {at_path(_path(keys))}")
      if isinstance(node, dict):
        pairs = {k: build(v) for k, v in node.items()}
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
      if isinstance(node, (list, tuple)):
        pairs = [build(v) for v in node]
        return type(node)(v[0] for v in pairs), type(node)(v[1] for v in pairs)
      return None, None
    index_keys = {i: k for k, i in found.items()}
    return build(skeleton)
  return _load_into(target, found, decode, quantized, where)


_BLOBS = ("data", "mask", "values", "scale", "zero")


def _verify_blobs(entry, blobs, where):
  for name in _BLOBS:
    if isinstance(entry, dict) and entry.get(name) is not None:
      _format.blob(blobs, entry[name], f"{where} ({name})", verify=True)


def _check_blob_layout(entries, size, where):
  """Blobs must tile the data section exactly: no gap, no overlap, nothing left over."""
  spans = []
  for e in entries:
    if isinstance(e, dict):
      for name in _BLOBS:
        b = e.get(name)
        if isinstance(b, dict) and isinstance(b.get("offset"), int) and isinstance(
            b.get("length"), int):
          spans.append((b["offset"], b["length"]))
  position = 0
  for offset, length in sorted(spans):
    if offset != position or length < 0:
      raise ExportError(f"{where}: the manifest's blobs overlap or leave gaps; corrupted.")
    position += length
  if position != size:
    raise ExportError(f"{where}: the manifest's blobs cover {position} of {size} data bytes; "
                      "corrupted.")


def _load_into(target, found, decode, quantized, where):
  with_path, treedef = _tree.tree_flatten_with_path(target, is_leaf=lambda x: x is None)
  keys = [tuple(key_code(k) for k in kp) for kp, _ in with_path]
  wanted = {k for k, (_, x) in zip(keys, with_path) if x is not None}
  missing = [_path(k) for k in keys if k not in found and k in wanted]
  extra = [_path(k) for k in found if k not in set(keys)]
  if missing or extra:
    raise ValueError(f"{where}: target and file hold different leaves. In target only: "
                     f"{listing(missing)}; in the file only: {listing(extra)}. Give a target "
                     "built like the saved params (e.g. jax.eval_shape of their init).")
  params, masks = [], []
  for k, (_, like) in zip(keys, with_path):
    if like is None:
      if k in found:
        raise ValueError(f"{where}: target has None at {at_path(_path(k))} but the file holds "
                         "a leaf there.")
      params.append(None)
      masks.append(None)
      continue
    x, m = decode(k)
    at = f"{where}: at {at_path(_path(k))}"
    if is_array(like):
      shape = tuple(x.shape) if hasattr(x, "shape") else None
      if shape != tuple(like.shape):
        raise ValueError(f"{at} target has {describe(like)} but the file holds shape {shape}.")
      if np.dtype(x.dtype) != np.dtype(like.dtype):
        raise ValueError(f"{at} target has dtype {like.dtype} but the file holds "
                         f"{np.dtype(x.dtype)}. Load with the saved dtype and convert after.")
    x, m = _finish(x, m, like if is_array(like) else None, quantized, at)
    params.append(x)
    masks.append(m)
  return treedef.unflatten(params), treedef.unflatten(masks)


def inspect(path) -> list[dict]:
  """Per stored leaf: path, kind, shape, dtype, bits, codings and bytes on disk.

  Each row has ``path``, ``kind`` (``"dense"``, ``"sparse"``, ``"quantized"``, ``"scalar"``),
  ``shape``, ``dtype``, ``bits``, ``mask_coding`` (``"bitmap"``, ``"rice"``, ``"rans"`` or
  ``None``), ``values_codec`` (``"raw"``, ``"zlib"``, ``"zlib1"``, ``"lzma"``, ``"rans"``),
  ``bytes`` (all blobs of the leaf), ``mask_bytes``, ``value_bytes`` and ``scale_bytes``
  (scales and zero points).

  >>> import tempfile, numpy as np
  >>> from jaxprune.export import save
  >>> f = save(tempfile.mkdtemp() + "/m", {"w": np.ones((64, 64), np.float32)},
  ...          {"w": np.eye(64, dtype=bool)}, bits=8)
  >>> [(r["path"], r["kind"], r["bits"], r["mask_coding"]) for r in inspect(f)]
  [('w', 'quantized', 8, 'rans')]
  >>> inspect(f)[0]["mask_bytes"] < 20  # 64 equal gaps: one rANS symbol, 18 bytes
  True
  """
  manifest, _ = _format.read(path)
  found: dict = {}
  _walk(manifest.get("tree"), (), found, f"export.inspect({str(path)!r})")
  rows = []
  for keys, i in sorted(found.items(), key=lambda kv: kv[1]):
    e = manifest["leaves"][i]
    length = lambda *names: sum((e.get(n) or {}).get("length", 0) for n in names)
    values = e.get("values") or e.get("data") or {}
    rows.append({"path": _path(keys), "kind": e["kind"], "shape": e.get("shape"),
                 "dtype": e.get("dtype"), "bits": e.get("bits"),
                 "mask_coding": (e.get("mask") or {}).get("coding"),
                 "values_codec": values.get("codec"),
                 "bytes": length("data", "mask", "values", "scale", "zero"),
                 "mask_bytes": length("mask"), "value_bytes": length("data", "values"),
                 "scale_bytes": length("scale", "zero")})
  return rows
