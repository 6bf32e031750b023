"""Atomic, verified save/restore of any pytree on top of orbax's ``StandardCheckpointHandler``.

A checkpoint is a plain orbax checkpoint directory (``ocp.StandardCheckpointer`` can read it)
plus one file, ``jaxprune_checkpoint.json``, written last: the size and SHA-256 of every other
file, user metadata, and the few leaves orbax cannot store itself (zero-size arrays). Orbax
already handles ``None`` leaves, NamedTuples, optax states, typed PRNG keys and shardings; this
module only adds what it lacks: an overwrite that never loses the old checkpoint, corruption
checks, and errors that name the leaf path.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxprune.core import at_path, describe, is_array, listing
from jaxprune.core._paths import key_to_str

MANIFEST = "jaxprune_checkpoint.json"
_FORMAT = "jaxprune.checkpoint"
_VERSION = 1
_ROOT = "root"  # key under which a bare leaf or an empty tree is wrapped (orbax rejects both)


# ----------------------------------------------------------------------------- paths of leaves


def _keys(keypath) -> tuple[str, ...]:
  return tuple(key_to_str(k) for k in keypath)


def _show(keys) -> str:
  return at_path("/".join(keys))


def _flatten(tree):
  """``[(keys, leaf)]`` with ``None`` leaves kept, and the treedef (None as a leaf)."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  return [(_keys(kp), x) for kp, x in with_path], treedef


def _is_key_array(x) -> bool:
  return is_array(x) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _is_scalar(x) -> bool:
  """Python/numpy real numbers and bools (orbax stores them as scalars)."""
  return (isinstance(x, (numbers.Number, np.number, np.bool_))
          and not isinstance(x, (complex, np.complexfloating)))


def _needs_wrapping(tree) -> bool:
  entries, treedef = _flatten(tree)
  return not entries or jax.tree_util.treedef_is_leaf(treedef)


# ----------------------------------------------------------------------------------- save


def _check_savable(tree, path: Path) -> list[dict]:
  """Rejects leaves orbax cannot store (before anything is written); lists zero-size arrays."""
  empty = []
  for keys, x in _flatten(tree)[0]:
    if x is None or _is_scalar(x):
      continue
    if isinstance(x, jax.core.Tracer):
      raise TypeError(
          f"checkpoint.save({str(path)!r}): the leaf at {_show(keys)} is a tracer "
          f"({describe(x)}). Saving writes files on the host: call it outside jax.jit / grad.")
    if isinstance(x, jax.ShapeDtypeStruct):
      raise TypeError(
          f"checkpoint.save({str(path)!r}): the leaf at {_show(keys)} is abstract "
          f"({describe(x)}); only concrete arrays can be saved. Use it as a restore target.")
    if not isinstance(x, (jax.Array, np.ndarray)):
      raise TypeError(
          f"checkpoint.save({str(path)!r}): unsupported leaf at {_show(keys)}: {describe(x)} "
          f"({type(x).__name__}). Leaves must be jax/numpy arrays, Python or numpy scalars, or "
          "None; keep other values (strings, functions) out of the tree (e.g. in metadata=).")
    if x.size == 0:
      if _is_key_array(x):
        raise TypeError(f"checkpoint.save({str(path)!r}): zero-size PRNG key arrays are not "
                        f"supported (leaf at {_show(keys)}); drop the leaf from the tree.")
      empty.append({"path": list(keys), "shape": list(x.shape), "dtype": np.dtype(x.dtype).name,
                    "numpy": isinstance(x, np.ndarray)})
  return empty


def _without_empty(tree, empty: list[dict]):
  """Replaces zero-size arrays (which orbax refuses to write) by ``None``."""
  drop = {tuple(e["path"]) for e in empty}
  entries, treedef = _flatten(tree)
  return treedef.unflatten([None if keys in drop else x for keys, x in entries])


def _file_table(directory: Path) -> dict[str, dict]:
  table = {}
  for root, _, files in os.walk(directory):
    for name in files:
      full = Path(root) / name
      rel = full.relative_to(directory).as_posix()
      if rel != MANIFEST:
        table[rel] = {"size": full.stat().st_size, "sha256": _sha256(full)}
  return dict(sorted(table.items()))


def _sha256(file: Path) -> str:
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _write_manifest(directory: Path, empty: list[dict], wrapped: bool, metadata) -> None:
  manifest = {"format": _FORMAT, "version": _VERSION, "wrapped": wrapped, "empty_arrays": empty,
              "metadata": metadata, "files": _file_table(directory)}
  with open(directory / MANIFEST, "w") as f:
    json.dump(manifest, f, indent=1)
    f.flush()
    os.fsync(f.fileno())


def save(path, tree, *, force: bool = False, metadata: dict | None = None) -> Path:
  """Saves a pytree (params, masks, optimizer state, ...) as an orbax checkpoint, atomically.

  The checkpoint is written to a temporary directory next to ``path`` and renamed into place
  only when complete, so a failed save leaves ``path`` as it was (an existing checkpoint is
  replaced only with ``force=True``, and only after the new one is fully written). ``None``
  leaves, NamedTuples, optax states, typed PRNG keys and sharded arrays are supported; each
  process of a sharded array writes its own shards (single-process use; for multi-host jobs use
  ``orbax.checkpoint.CheckpointManager`` directly). Host side: call it outside ``jax.jit``.

  Args:
    path: directory to create (local or mounted file system).
    tree: any pytree of jax/numpy arrays, Python/numpy scalars and ``None``.
    force: replace an existing checkpoint at ``path``.
    metadata: optional JSON-serialisable dict stored alongside (see :func:`metadata`).

  Returns:
    The absolute path of the checkpoint.

  >>> import tempfile, jax.numpy as jnp
  >>> d = tempfile.mkdtemp()
  >>> _ = save(d + "/ckpt", {"w": jnp.ones((2, 2)), "mask": None})
  >>> restore(d + "/ckpt")["w"].tolist()
  [[1.0, 1.0], [1.0, 1.0]]
  """
  path = Path(os.fspath(path)).absolute()
  if path.exists() and not force:
    raise FileExistsError(f"checkpoint.save: {str(path)!r} already exists. Pass force=True to "
                          "replace it (the old one is kept until the new one is complete).")
  empty = _check_savable(tree, path)
  if metadata is not None:
    try:
      json.dumps(metadata)
    except (TypeError, ValueError) as err:
      raise TypeError(f"checkpoint.save({str(path)!r}): metadata must be JSON-serialisable "
                      f"(dicts, lists, str, numbers); got {describe(metadata)}: {err}") from None
  stored = _without_empty(tree, empty)
  wrapped = _needs_wrapping(stored)
  if wrapped:
    stored = {_ROOT: stored}
  path.parent.mkdir(parents=True, exist_ok=True)
  tag = uuid.uuid4().hex[:12]
  tmp = path.parent / f".{path.name}.jaxprune-tmp-{tag}"
  old = path.parent / f".{path.name}.jaxprune-old-{tag}"
  moved_old = False
  try:
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
      ckptr.save(tmp, args=ocp.args.StandardSave(stored))
    _write_manifest(tmp, empty, wrapped, metadata)
    if path.exists() or path.is_symlink():
      os.replace(path, old)
      moved_old = True
    os.replace(tmp, path)
  except BaseException:
    if moved_old and not path.exists():
      os.replace(old, path)
      moved_old = False
    for leftover in path.parent.glob(f".{path.name}.jaxprune-tmp-{tag}*"):
      _remove(leftover)
    raise
  if moved_old:
    _remove(old)
  _sync_dir(path.parent)
  return path


def _sync_dir(directory: Path) -> None:
  """Makes the renames durable where the platform allows it (POSIX)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _remove(p: Path) -> None:
  if p.is_dir() and not p.is_symlink():
    shutil.rmtree(p, ignore_errors=True)
  else:
    p.unlink(missing_ok=True)


# -------------------------------------------------------------------------------- reading


def _checked_dir(path) -> Path:
  path = Path(os.fspath(path)).absolute()
  if not path.exists():
    raise FileNotFoundError(f"checkpoint: no checkpoint at {str(path)!r} (path does not exist).")
  if not path.is_dir():
    raise ValueError(f"checkpoint: {str(path)!r} is a file; a checkpoint is a directory written "
                     "by checkpoint.save.")
  return path


def _read_manifest(path: Path, required: bool) -> dict | None:
  file = path / MANIFEST
  if not file.exists():
    if required:
      raise ValueError(
          f"checkpoint: {str(path)!r} has no {MANIFEST}: the save did not complete, or this is "
          "not a jaxprune checkpoint. To read a plain orbax checkpoint without integrity "
          "checks, pass verify=False.")
    return None
  try:
    with open(file) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as err:
    raise ValueError(f"checkpoint: {str(file)!r} is unreadable or corrupted: {err}") from None
  if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
    raise ValueError(f"checkpoint: {str(file)!r} is not a jaxprune checkpoint manifest.")
  if manifest.get("version", 0) > _VERSION:
    raise ValueError(f"checkpoint: {str(path)!r} was written by a newer jaxprune (format version "
                     f"{manifest['version']} > {_VERSION}); upgrade jaxprune to read it.")
  return manifest


def _verify(path: Path, manifest: dict) -> None:
  for rel, expected in manifest["files"].items():
    file = path / rel
    if not file.is_file():
      raise ValueError(f"checkpoint {str(path)!r} is incomplete: file {rel!r} is missing. "
                       "Restore from another copy or an earlier checkpoint.")
    size = file.stat().st_size
    if size != expected["size"]:
      raise ValueError(
          f"checkpoint {str(path)!r} is corrupted: file {rel!r} has {size} bytes, expected "
          f"{expected['size']} (truncated or partially copied). Restore from another copy.")
    if _sha256(file) != expected["sha256"]:
      raise ValueError(
          f"checkpoint {str(path)!r} is corrupted: the SHA-256 of file {rel!r} does not match the "
          "one recorded at save time. Restore from another copy.")


def _saved_leaves(path: Path, ckptr, manifest) -> dict:
  """``{keys: None | (shape, dtype, kind)}`` for every leaf in the checkpoint."""
  try:
    tree = ckptr.metadata(path).item_metadata.tree
  except Exception as err:  # orbax raises many types for unreadable metadata
    raise ValueError(f"checkpoint: cannot read the orbax metadata of {str(path)!r} (corrupted "
                     f"or not an orbax checkpoint): {type(err).__name__}: {err}") from None
  wrapped = bool(manifest and manifest.get("wrapped"))
  if wrapped:
    tree = tree[_ROOT]
  saved = {}
  for keys, m in _flatten(tree)[0]:
    if m is None:
      saved[keys] = None
    else:
      kind = "scalar" if isinstance(m, ocp.metadata.ScalarMetadata) else "array"
      saved[keys] = (tuple(m.shape), np.dtype(m.dtype) if m.dtype is not None else None, kind)
  for e in (manifest or {}).get("empty_arrays", []):
    saved[tuple(e["path"])] = (tuple(e["shape"]), np.dtype(e["dtype"]), "empty")
  return saved


def _expected(x):
  """``(shape, dtype)`` a target leaf needs on disk (PRNG keys are stored as their key data)."""
  if _is_key_array(x):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return tuple(data.shape), np.dtype(data.dtype)
  return tuple(x.shape), np.dtype(x.dtype)


class _Empty:
  """Stands for an empty container in a target (orbax saves empty NamedTuples as None)."""

  def __repr__(self):
    return "an empty container"


def _is_empty_node(x) -> bool:
  if x is None or is_array(x) or _is_scalar(x):
    return False
  return jax.tree_util.tree_structure(x, is_leaf=lambda y: y is None).num_leaves == 0


def _check_target(path: Path, target, saved: dict) -> None:
  with_path = jax.tree_util.tree_flatten_with_path(
      target, is_leaf=lambda x: x is None or _is_empty_node(x))[0]
  entries = [(_keys(kp), _Empty() if _is_empty_node(x) else x) for kp, x in with_path]
  names = {keys for keys, _ in entries}
  missing = [k for k in saved if k not in names]
  extra = [k for k, x in entries if k not in saved and not isinstance(x, _Empty)]
  if missing or extra:
    detail = ""
    if missing:
      detail += f" In the checkpoint but not in target: {listing('/'.join(k) for k in missing)}."
    if extra:
      detail += f" In target but not in the checkpoint: {listing('/'.join(k) for k in extra)}."
    raise ValueError(
        f"checkpoint.restore({str(path)!r}): target's tree structure does not match the "
        f"checkpoint's.{detail} Build target from the same init function that produced the "
        "saved tree (e.g. jax.eval_shape(init, ...)), or pass target=None to get the raw tree.")
  for keys, x in entries:
    s = saved.get(keys)
    where = f"checkpoint.restore({str(path)!r}): at {_show(keys)}"
    if isinstance(x, _Empty):
      if s is not None:
        raise ValueError(f"{where} target has {x} but the checkpoint has an array of shape "
                         f"{s[0]}.")
      continue
    if x is None or s is None:
      if (x is None) != (s is None):
        got = "None" if x is None else describe(x)
        has = "None" if s is None else f"an array of shape {s[0]}"
        raise ValueError(f"{where} target has {got} but the checkpoint has {has}. Make target's "
                         "None leaves match the saved tree.")
      continue
    if _is_scalar(x) and not is_array(x):
      if s[0] != ():
        raise ValueError(f"{where} target is the scalar {x!r} but the checkpoint holds shape "
                         f"{s[0]}.")
      continue
    if not is_array(x):
      raise TypeError(f"{where} unsupported target leaf {describe(x)}: use arrays, "
                      "jax.ShapeDtypeStruct (e.g. from jax.eval_shape), scalars or None.")
    shape, dtype = _expected(x)
    if shape != s[0]:
      raise ValueError(f"{where} target has shape {tuple(x.shape)} but the checkpoint holds shape "
                       f"{s[0]}. Build target with the same model configuration as the saved one.")
    if s[2] == "array" and s[1] is not None and dtype != s[1]:
      raise ValueError(f"{where} target has dtype {x.dtype} but the checkpoint holds {s[1]}. "
                       f"Restore with dtype {s[1]} and convert afterwards (x.astype(...)).")
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding):
      try:
        sharding.shard_shape(tuple(x.shape))
      except Exception as err:
        raise ValueError(f"{where} target's sharding {sharding} does not fit shape "
                         f"{tuple(x.shape)}: {err}") from None


def _fill_empty(tree, manifest, target_entries: dict | None):
  empty = {tuple(e["path"]): e for e in (manifest or {}).get("empty_arrays", [])}
  if not empty:
    return tree
  entries, treedef = _flatten(tree)
  out = []
  for keys, x in entries:
    e = empty.get(keys)
    if e is None:
      out.append(x)
      continue
    like = None if target_entries is None else target_entries.get(keys)
    shape, dtype = tuple(e["shape"]), np.dtype(e["dtype"])
    if isinstance(like, np.ndarray) or (like is None and e.get("numpy")):
      out.append(np.zeros(shape, dtype))
    else:
      sharding = None if like is None or _unplaced(like) else like.sharding
      out.append(jax.device_put(np.zeros(shape, dtype), sharding))
  return treedef.unflatten(out)


def _unplaced(x) -> bool:
  """A target leaf that asks for no placement: abstract without sharding, or uncommitted."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return x.sharding is None
  return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.committed


def _orbax_target(target, manifest):
  """The target handed to orbax, and how to finish each leaf that asked for no placement.

  Leaves without a requested placement come back uncommitted on the default device (like
  ``jnp.asarray``), so they mix with sharded arrays under ``jax.jit``: orbax reads them into
  numpy and ``jax.device_put`` moves them (typed PRNG keys go through their key data).
  """
  drop = {tuple(e["path"]) for e in (manifest or {}).get("empty_arrays", [])}
  entries, treedef = _flatten(target)
  out, finish = [], {}
  for keys, x in entries:
    if keys in drop:
      out.append(None)
    elif is_array(x) and _unplaced(x):
      if _is_key_array(x):
        finish[keys] = "key"
        out.append(jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])))
      else:
        finish[keys] = "device"
        out.append(np.empty(x.shape, x.dtype))
    else:
      out.append(x)
  return treedef.unflatten(out), finish


def _finish(tree, finish: dict):
  if not finish:
    return tree
  entries, treedef = _flatten(tree)
  out = []
  for keys, x in entries:
    how = finish.get(keys)
    if how == "device":
      x = jax.device_put(x)
    elif how == "key":
      data = jax.device_put(np.asarray(jax.random.key_data(x)))
      x = jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    out.append(x)
  return treedef.unflatten(out)


def restore(path, target=None, *, verify: bool = True):
  """Restores a checkpoint written by :func:`save`, onto the structure and shardings of ``target``.

  Args:
    path: the checkpoint directory.
    target: ``None``, or a pytree like the saved one whose leaves are concrete arrays or
      ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape`` or :func:`abstract`). Restored
      arrays take the target's shardings and its container types (NamedTuples, optax states,
      ``nnx.State``); a leaf without a sharding (abstract without one, or an uncommitted
      array) comes back uncommitted on the default device, like ``jnp.asarray``, so it mixes
      with sharded arrays under ``jax.jit``. Without a target, containers come back as dicts
      and lists and arrays on their saved shardings.
    verify: check every file's size and SHA-256 against the manifest first (detects truncated
      and corrupted files). ``verify=False`` skips this and also reads plain orbax checkpoints.

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: corrupted or incomplete checkpoint, or a target whose tree, shapes or dtypes do
      not match the checkpoint (the message names the leaf path).

  >>> import tempfile, jax, jax.numpy as jnp
  >>> d = tempfile.mkdtemp()
  >>> state = {"count": jnp.int32(3), "masks": {"w": jnp.ones(4, bool), "b": None}}
  >>> _ = save(d + "/c", state)
  >>> out = restore(d + "/c", jax.eval_shape(lambda: state))
  >>> int(out["count"]), out["masks"]["b"]
  (3, None)
  """
  path = _checked_dir(path)
  manifest = _read_manifest(path, required=verify)
  if verify:
    _verify(path, manifest)
  wrapped = bool(manifest and manifest.get("wrapped"))
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
    saved = _saved_leaves(path, ckptr, manifest)
    target_entries, finish = None, {}
    if target is None:
      args = ocp.args.StandardRestore()
    else:
      _check_target(path, target, saved)
      target_entries = dict(_flatten(target)[0])
      item, finish = _orbax_target(target, manifest)
      args = ocp.args.StandardRestore({_ROOT: item} if wrapped else item)
    try:
      out = ckptr.restore(path, args=args)
    except Exception as err:  # orbax/tensorstore raise bare Exceptions on unreadable data
      message = str(err).split("\n", 1)[0][:400]
      raise ValueError(f"checkpoint.restore({str(path)!r}) failed to read the data (corrupted "
                       f"checkpoint?): {type(err).__name__}: {message}") from err
  if wrapped:
    out = out[_ROOT]
  return _fill_empty(_finish(out, finish), manifest, target_entries)


def metadata(path) -> dict | None:
  """The ``metadata=`` dict given to :func:`save` (``None`` when none was given).

  >>> import tempfile, jax.numpy as jnp
  >>> d = tempfile.mkdtemp()
  >>> _ = save(d + "/c", {"w": jnp.ones(2)}, metadata={"step": 100})
  >>> metadata(d + "/c")
  {'step': 100}
  """
  return _read_manifest(_checked_dir(path), required=True).get("metadata")


def abstract(tree, sharding: jax.sharding.Sharding | Callable[[str, Any], Any] | None = None):
  """``jax.ShapeDtypeStruct`` leaves (with shardings) for :func:`restore`'s ``target``.

  Args:
    tree: a pytree of arrays or ``ShapeDtypeStruct`` (e.g. ``jax.eval_shape(init, ...)``);
      ``None`` and scalar leaves are kept.
    sharding: ``None`` keeps each leaf's own sharding (none for uncommitted arrays); a
      ``jax.sharding.Sharding`` is given to every array leaf; a callable
      ``(path, leaf) -> Sharding | None`` chooses per leaf (``path`` like ``"dense/kernel"``).

  >>> import jax, jax.numpy as jnp
  >>> one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  >>> abstract({"w": jnp.ones((2, 3)), "mask": None}, one)["w"].shape
  (2, 3)
  """
  entries, treedef = _flatten(tree)
  out = []
  for keys, x in entries:
    if x is None or not is_array(x):
      out.append(x)
      continue
    if sharding is None:
      s = None if _unplaced(x) else getattr(x, "sharding", None)
      s = s if isinstance(s, jax.sharding.Sharding) else None
    elif isinstance(sharding, jax.sharding.Sharding):
      s = sharding
    elif callable(sharding):
      s = sharding("/".join(keys), x)
    else:
      raise TypeError(f"abstract: sharding must be None, a jax.sharding.Sharding or a callable "
                      f"(path, leaf) -> Sharding; got {describe(sharding)}.")
    if s is not None and not isinstance(s, jax.sharding.Sharding):
      raise TypeError(f"abstract: the sharding for {_show(keys)} must be a jax.sharding.Sharding "
                      f"or None; got {describe(s)}.")
    try:
      out.append(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s))
    except ValueError as err:
      raise ValueError(f"abstract: the sharding for {_show(keys)} does not fit its shape "
                       f"{tuple(x.shape)}: {err} Pass a callable sharding=(path, leaf) -> "
                       "Sharding to choose per leaf.") from None
  return treedef.unflatten(out)
