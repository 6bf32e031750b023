"""``export.save``/``export.load``: kept values (float or quantised) and entropy-coded masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import quantize as _q
from jaxprune.core import at_path, describe, is_array, leaves_like, processes, unwrap_variables
from jaxprune.export import _codecs, _format
from jaxprune.export._compress import _host

_tree = jax.tree_util


def key_code(k, path: str | None = None):
  """A key entry as ``("s", str)`` or ``("i", int)``: the identity used on disk and to match.

  An unsupported key raises (naming ``path``) when saving; with ``path=None`` (matching a
  load target) it becomes ``("?", repr)``, which matches nothing on disk.
  """
  if isinstance(k, _tree.DictKey):
    if isinstance(k.key, str):
      return ("s", k.key)
    if isinstance(k.key, (int, np.integer)) and not isinstance(k.key, bool):
      return ("i", int(k.key))
  elif isinstance(k, _tree.SequenceKey):
    return ("i", k.idx)
  elif isinstance(k, _tree.GetAttrKey):
    return ("s", k.name)
  elif isinstance(k, _tree.FlattenedIndexKey):
    return ("i", int(k.key))
  if path is None:
    return ("?", repr(k))
  if isinstance(k, _tree.DictKey):
    raise TypeError(f"export.save: the dict key {k.key!r} ({type(k.key).__name__}) under "
                    f"{at_path(path)} cannot be saved: only str and int keys are supported.")
  raise TypeError(f"export.save: unsupported pytree key {k!r} under {at_path(path)}.")


def _path(keys) -> str:
  return "/".join(str(v) for _, v in keys)


def _encode_tree(node, keys, out: list):
  """The JSON structure of ``node``; appends ``(keys, leaf)`` for each leaf, in flatten order."""
  if node is None:
    return {"none": None}
  if _q.is_quantized(node):
    out.append((keys, node))
    return {"leaf": len(out) - 1}
  children = _tree.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
  if len(children) == 1 and children[0][0] == () and children[0][1] is node:
    out.append((keys, node))
    return {"leaf": len(out) - 1}
  entries = [(key_code(kp[0], _path(keys)), child) for kp, child in children]
  if type(node) in (list, tuple):
    kind = type(node).__name__
  else:
    kind = "dict" if isinstance(node, dict) or all(k[0] == "s" for k, _ in entries) else "list"
  if kind == "dict":
    return {"dict": [[list(k), _encode_tree(c, keys + (k,), out)] for k, c in entries]}
  return {kind: [_encode_tree(c, keys + (k,), out) for k, c in entries]}


class _Blobs:
  """The blobs of a file; their rANS streams are encoded together by :meth:`finish`, which
  then completes each blob's manifest entry (offset, length, checksum)."""

  def __init__(self):
    self.items, self.size = [], 0

  def add(self, meta: dict, data) -> dict:
    meta = dict(meta)
    self.items.append((meta, data))
    return meta

  def finish(self) -> list[bytes]:
    parts = _codecs.join_all([data for _, data in self.items])
    for (meta, _), data in zip(self.items, parts):
      meta.update(offset=self.size, length=len(data), sha256=_format.sha256(data))
      self.size += len(data)
    return parts


def _array(path: str, x) -> np.ndarray:
  if jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
    raise TypeError(f"export.save: the leaf at {at_path(path)} is a PRNG key array; save "
                    "jax.random.key_data(key) instead.")
  v = _host(path, x, "the leaf")
  if not _storable(v.dtype):
    raise TypeError(f"export.save: the leaf at {at_path(path)} is {describe(x)}; only numeric "
                    "and bool arrays can be saved.")
  return v if v.flags.c_contiguous else v.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def _storable(dtype) -> bool:
  """Numeric, bool, or an ml_dtypes type JAX knows by name (bfloat16, float8_*, int4)."""
  if dtype.kind in "biufc":
    return True
  if dtype.kind != "V" or dtype.fields is not None:
    return False
  try:
    return np.dtype(jax.numpy.dtype(dtype.name)) == dtype
  except TypeError:
    return False


def _entry(path, x, mask, blobs: _Blobs, compression: str) -> dict:
  if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
    kind = type(x).__name__
    value = float(x).hex() if kind == "float" else str(x)
    return {"kind": "scalar", "type": kind, "value": value}
  if _q.is_quantized(x):
    return _quantized_entry(path, x, mask, blobs, compression)
  if not is_array(x):
    raise TypeError(f"export.save: the leaf at {at_path(path)} is {describe(x)}; only arrays, "
                    "Python scalars and None can be saved.")
  v = _array(path, x)
  head = {"dtype": v.dtype.name, "shape": list(v.shape)}
  if mask is None:
    return dict(head, kind="dense", data=blobs.add(*_codecs.encode_values(v, compression)))
  m = np.asarray(_host(path, mask, "the mask")).astype(bool)
  return dict(head, kind="sparse", mask=blobs.add(*_codecs.encode_mask(m, compression)),
              values=blobs.add(*_codecs.encode_values(v[m], compression)))


_SCALE_STORAGE = (np.dtype(jnp.bfloat16), np.dtype(np.float16), np.dtype(np.float32))


def _narrowest_exact(scale: np.ndarray) -> np.ndarray:
  """``scale`` in the narrowest float dtype that holds every value bit-exactly."""
  for dtype in _SCALE_STORAGE:
    if dtype.itemsize >= scale.dtype.itemsize:
      break
    narrow = scale.astype(dtype)
    if narrow.astype(scale.dtype).tobytes() == scale.tobytes():
      return narrow
  return scale


def _quantized_entry(path, q, mask, blobs, compression):
  values = np.asarray(jax.device_get(q.values))
  lo, hi = -(2 ** (q.bits - 1)), 2 ** (q.bits - 1) - 1
  if values.dtype != np.int8 or values.size and (values.min() < lo or values.max() > hi):
    raise ValueError(f"export.save: the quantised leaf at {at_path(path)} must hold int8 values "
                     f"in [{lo}, {hi}] for {q.bits} bits; got {describe(values)}.")
  scale = np.asarray(jax.device_get(q.scale))
  if not jnp.issubdtype(scale.dtype, jnp.floating):
    raise ValueError(f"export.save: the quantised leaf at {at_path(path)} must have floating "
                     f"scales; got {describe(scale)}.")
  m = None
  if mask is not None:
    m = np.asarray(_host(path, mask, "the mask")).astype(bool)
    values = values[m]
  stored = _narrowest_exact(scale)
  entry = {"kind": "quantized", "dtype": np.dtype(q.dtype).name, "shape": list(q.shape),
           "bits": q.bits, "scale_shape": list(scale.shape), "scale_dtype": scale.dtype.name,
           "scale_storage": stored.dtype.name,
           "mask": None if m is None else blobs.add(*_codecs.encode_mask(m, compression)),
           "values": blobs.add(*_codecs.encode_ints(values, q.bits, compression)),
           "scale": blobs.add(*_codecs.encode_values(stored, compression)), "zero": None}
  if q.zero is not None:
    zero = np.asarray(jax.device_get(q.zero), np.int8)
    entry["zero"] = blobs.add(*_codecs.encode_values(zero, compression))
  return entry


def save(path, params, masks=None, *, bits: int | None = None, axis: int | None = -1,
         group_size: int | None = None, group_axis: int = -2, symmetric: bool = True,
         where=None, scale_dtype=jnp.bfloat16, compression: str = "best",
         force: bool = False) -> str:
  """Saves ``params`` pruned by ``masks`` in one compact, checksummed file (host-side).

  Masked leaves store their kept entries (row-major) and the mask in the smallest of a bitmap
  (raw, zlib or lzma) and a Golomb-Rice or rANS code of the gaps between kept (or pruned)
  positions, chosen per leaf; value bytes are shuffled and compressed (zlib, lzma, or an
  order-0 rANS code per byte plane) when that is smaller. With ``bits=8`` or ``4`` the leaves
  selected by ``where`` are first quantised with :func:`jaxprune.quantize.quantize` (same
  options, scales from kept weights only, rounded up to bfloat16 by default) and their int
  values stored (4-bit ones two per byte or rANS-coded); leaves that are already
  :class:`jaxprune.quantize.QuantizedLeaf` are stored as they are, bit-exactly (their scales
  in the narrowest float dtype that holds them exactly). Pruned entries are dropped whatever
  their value (they load as 0, or as the zero point in the quantised form).

  The file is written to a temporary file, fsynced and renamed over ``path`` (never a partial
  file). In a multi-process job (``jax.distributed``) every process calls ``save`` with the
  same arguments: arrays sharded across processes are gathered to every host, process 0 writes
  the file, and an error on any process is raised on every process (none waits forever). Its
  layout (version 3, documented in ``jaxprune/export/_format.py``) keeps the
  container structure, so keys never collide (``{"a.b": x, "a": {"b": y}}`` round-trips).

  Args:
    path: the file to write.
    params: any pytree of arrays (Python scalars and ``None`` leaves are kept too); flax nnx
      Variables (``nnx.state(model, nnx.Param)``) are stored as the arrays they hold.
    masks: pytree like ``params``: bool array (True = kept) or ``None`` per leaf; or ``None``
      (e.g. ``masks_of(nnx_optimizer.opt_state)``: its ``OptVariable`` leaves are unwrapped).
    bits: ``None`` (store floats exactly), 8 or 4 (or 2..8).
    axis, group_size, group_axis, symmetric, where: quantisation options (see
      :func:`jaxprune.quantize.quantize`), used when ``bits`` is given.
    scale_dtype: the dtype of the scales when ``bits`` is given: ``jnp.bfloat16`` (default:
      each scale rounded up to a bfloat16, stored in 2 bytes) or ``jnp.float32`` (the scales
      of ``quantize``'s default).
    compression: ``"best"`` (try zlib, lzma and rANS, keep the smallest), ``"fast"`` (zlib
      level 1 and rANS) or ``"none"`` (raw bytes, bitmap masks).
    force: replace an existing file.

  Returns:
    The absolute path written.

  >>> import tempfile, numpy as np
  >>> from jaxprune.export import load
  >>> d = tempfile.mkdtemp()
  >>> _ = save(d + "/model", {"w": np.arange(4, dtype=np.float32)},
  ...      {"w": np.array([0, 1, 1, 0], bool)})
  >>> params, masks = load(d + "/model")
  >>> params["w"].tolist(), masks["w"].tolist()
  ([0.0, 1.0, 2.0, 0.0], [False, True, True, False])
  """
  options = dict(bits=bits, axis=axis, group_size=group_size, group_axis=group_axis,
                 symmetric=symmetric, where=where, scale_dtype=scale_dtype,
                 compression=compression, force=force)
  params, masks = unwrap_variables(params), unwrap_variables(masks)  # nnx Param / OptVariable
  if processes.count() == 1:
    return _write(path, params, masks, **options)
  operation = processes.next_operation("export")
  shapes = jax.tree.map(lambda x: f"{getattr(x, 'dtype', type(x).__name__)}{np.shape(x)}",
                        (params, masks))
  processes.check_same(operation, "arguments", {"path": str(path), "tree": str(shapes)})
  params, masks = processes.to_host((params, masks))  # collective: every process gathers
  written, error = None, None
  if processes.is_primary():
    try:
      written = _write(path, params, masks, **options)
    except Exception as err:  # raised on every process by agree
      error = err
  processes.agree(operation, "write", error)
  return processes.exchange(operation, "path", written or "")[0]


def _write(path, params, masks, *, bits, axis, group_size, group_axis, symmetric, where,
           scale_dtype, compression, force) -> str:
  """:func:`save` on one process."""
  if compression not in _codecs.COMPRESSIONS:
    raise ValueError(f"export.save: compression must be one of {_codecs.COMPRESSIONS}; got "
                     f"{compression!r}.")
  if isinstance(force, (bool, np.bool_)) is False:
    raise TypeError(f"export.save: force must be True or False; got {force!r}.")
  leaves, treedef = _tree.tree_flatten(params, is_leaf=_q.is_quantized)
  if masks is None:
    mask_leaves = [None] * len(leaves)
  else:
    try:
      mask_leaves = treedef.flatten_up_to(masks)
    except (ValueError, TypeError):
      leaves_like(params, masks, name="masks")  # raises a message naming the paths
      raise ValueError("export.save: masks must have the structure of params (None where a "
                       "leaf is not pruned).") from None
  stored = params
  if bits is not None:
    stored = _q.quantize(params, bits, axis=axis, group_size=group_size, group_axis=group_axis,
                         symmetric=symmetric, masks=masks, where=where,
                         scale_dtype=scale_dtype)
  found = []
  tree = _encode_tree(stored, (), found)
  stored_leaves = treedef.flatten_up_to(stored)
  if len(found) != len(stored_leaves):
    raise RuntimeError("export.save: internal error: leaf walk and flatten disagree.")
  blobs, entries = _Blobs(), []
  for (keys, x), m, original in zip(found, mask_leaves, leaves):
    p = _path(keys)
    if m is not None:
      like = x if _q.is_quantized(x) else original
      if not (is_array(like) or _q.is_quantized(like)) or tuple(np.shape(m)) != tuple(like.shape):
        raise ValueError(f"export.save: the mask at {at_path(p)} is {describe(m)} but the leaf "
                         f"there is {describe(like)}; a mask must be a bool array of the "
                         "leaf's shape (or None).")
    entries.append(_entry(p, x, m, blobs, compression))
  parts = blobs.finish()
  manifest = {"format": _format.FORMAT, "version": _format.VERSION, "blobs_size": blobs.size,
              "tree": tree, "leaves": entries}
  return _format.write(path, manifest, parts, force=force)

