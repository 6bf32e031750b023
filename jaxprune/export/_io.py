"""Saving and loading the compressed form with orbax (through ``jaxprune.checkpoint``)."""

from __future__ import annotations

import jax
import numpy as np

from jaxprune import checkpoint
from jaxprune.checkpoint import _checkpoint as _ckpt
from jaxprune.core import at_path, describe, is_array
from jaxprune.export._compress import PackedLeaf, _is_packed, compress, decompress

_FORMAT = "jaxprune.export"
_VERSION = 1


def save(path, params, masks, *, force: bool = False):
  """Saves ``params`` compressed by ``masks`` (see :func:`compress`) as an orbax checkpoint.

  On disk every masked leaf is two arrays, ``<path>/bits`` (uint8, the packed mask) and
  ``<path>/values`` (the kept entries), and every other leaf is stored as it is; orbax adds
  zstd compression. A JSON entry records, per packed leaf, its shape, dtype and kept count,
  so :func:`load` rebuilds the exact params and masks. Atomic like
  :func:`jaxprune.checkpoint.save` (nothing is overwritten unless ``force=True``, and never by
  a failed save). Host-side.

  Args:
    path: directory to create.
    params: any pytree of arrays.
    masks: pytree like ``params`` of bool arrays (True = kept) or ``None``.
    force: replace an existing directory at ``path``.

  Returns:
    The absolute path written.

  >>> import tempfile, numpy as np
  >>> d = tempfile.mkdtemp()
  >>> _ = save(d + "/model", {"w": np.arange(4, dtype=np.float32)},
  ...      {"w": np.array([0, 1, 1, 0], bool)})
  >>> params, masks = load(d + "/model")
  >>> params["w"].tolist(), masks["w"].tolist()
  ([0.0, 1.0, 2.0, 0.0], [False, True, True, False])
  """
  compressed = compress(params, masks)
  packed = []
  with_path = jax.tree_util.tree_flatten_with_path(compressed, is_leaf=_is_packed)[0]
  for keypath, x in with_path:
    if _is_packed(x):
      packed.append({"path": list(_ckpt._keys(keypath)), "shape": list(x.shape),
                     "dtype": np.dtype(x.dtype).name, "kept": int(x.values.shape[0])})
  meta = {"format": _FORMAT, "version": _VERSION, "packed": packed}
  return checkpoint.save(path, compressed, force=force, metadata=meta)


def _export_meta(path):
  meta = checkpoint.metadata(path)
  if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
    raise ValueError(f"export.load: {str(path)!r} is a checkpoint but not a compressed export "
                     "(written by export.save); read it with jaxprune.checkpoint.restore.")
  if meta.get("version", 0) > _VERSION:
    raise ValueError(f"export.load: {str(path)!r} has format version {meta['version']}, newer "
                     f"than this jaxprune ({_VERSION}); upgrade jaxprune.")
  return {tuple(e["path"]): e for e in meta["packed"]}


def _rebuild(node, keys, packed):
  """Turns the ``{"bits", "values"}`` dicts of a raw restored tree back into PackedLeaf."""
  entry = packed.get(keys)
  if entry is not None:
    if not isinstance(node, dict) or set(node) != {"bits", "values"}:
      raise ValueError(f"export.load: the packed leaf at {at_path('/'.join(keys))} is missing "
                       f"its bits/values arrays; got {describe(node)}. The export is corrupted.")
    return PackedLeaf(bits=node["bits"], values=node["values"], shape=tuple(entry["shape"]))
  if isinstance(node, dict):
    return {k: _rebuild(v, keys + (str(k),), packed) for k, v in node.items()}
  if isinstance(node, (list, tuple)):
    return type(node)(_rebuild(v, keys + (str(i),), packed) for i, v in enumerate(node))
  return node


def _packed_target(target, packed, path):
  """A restore target for the compressed tree, from a params-like target."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(target, is_leaf=lambda x: x is None)
  out = []
  for keypath, x in with_path:
    keys = _ckpt._keys(keypath)
    entry = packed.get(keys)
    if entry is None:
      out.append(x)
      continue
    shape = tuple(entry["shape"])
    if not is_array(x) or tuple(x.shape) != shape:
      raise ValueError(f"export.load({str(path)!r}): at {at_path('/'.join(keys))} target has "
                       f"{describe(x)} but the export holds a pruned leaf of shape {shape}.")
    if np.dtype(x.dtype) != np.dtype(entry["dtype"]):
      raise ValueError(f"export.load({str(path)!r}): at {at_path('/'.join(keys))} target has "
                       f"dtype {x.dtype} but the export holds {entry['dtype']}. Load with the "
                       "saved dtype and convert afterwards.")
    n = int(np.prod(shape))
    out.append(PackedLeaf(bits=jax.ShapeDtypeStruct(((n + 7) // 8,), np.uint8),
                          values=jax.ShapeDtypeStruct((entry["kept"],), x.dtype), shape=shape))
  return treedef.unflatten(out)


def _place(tree, target):
  """Puts every restored array on the sharding of the matching target leaf."""
  def put(x, like):
    sharding = getattr(like, "sharding", None)
    if x is None or not isinstance(sharding, jax.sharding.Sharding):
      return x
    return jax.device_put(x, sharding)
  return jax.tree.map(put, tree, target, is_leaf=lambda x: x is None)


def load(path, target=None, *, verify: bool = True):
  """Loads an export written by :func:`save`; returns ``(params, masks)`` exactly as saved.

  Args:
    path: the export directory.
    target: optional pytree like the saved params (concrete arrays or ``jax.ShapeDtypeStruct``,
      e.g. from ``jax.eval_shape``): gives the container types and the shardings of the
      returned params and masks. Without it containers come back as dicts and lists.
    verify: check file sizes and checksums first (see :func:`jaxprune.checkpoint.restore`).

  >>> import tempfile, jax, numpy as np
  >>> d = tempfile.mkdtemp()
  >>> params = (np.ones((2, 2), np.float32), np.ones(2, np.float32))
  >>> _ = save(d + "/m", params, (np.eye(2, dtype=bool), None))
  >>> p, m = load(d + "/m", target=jax.eval_shape(lambda: params))
  >>> type(p).__name__, p[0].tolist(), m[1]
  ('tuple', [[1.0, 0.0], [0.0, 1.0]], None)
  """
  packed = _export_meta(path)
  if target is None:
    raw = checkpoint.restore(path, verify=verify)
    return decompress(_rebuild(raw, (), packed))
  compressed = checkpoint.restore(path, _packed_target(target, packed, path), verify=verify)
  params, masks = decompress(compressed)
  return _place(params, target), _place(masks, target)
