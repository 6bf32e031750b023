"""Verified restore onto a target's structure and shardings, on any number of processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxprune.checkpoint import _manifest, _save, _target, _tree
from jaxprune.core import processes as _sync
from jaxprune.core import describe, is_array


def checked_dir(path) -> Path:
  path = Path(os.fspath(path)).absolute()
  if not path.exists():
    hint = ""
    if _save.old_dir(path).is_dir():
      hint = (f" A save that replaced it was interrupted; the previous checkpoint is at "
              f"{str(_save.old_dir(path))!r} (rename it back to use it).")
    raise FileNotFoundError(
        f"checkpoint: no checkpoint at {str(path)!r} (path does not exist).{hint}")
  if not path.is_dir():
    raise ValueError(f"checkpoint: {str(path)!r} is a file; a checkpoint is a directory written "
                     "by checkpoint.save.")
  return path


def _saved_leaves(path: Path, handler, manifest) -> dict:
  """``{keys: None | (kind, shape, dtype)}`` as stored (escaped keys, wrapper included)."""
  try:
    tree = handler.metadata(epath.Path(path)).tree
  except Exception as err:  # orbax raises many types for unreadable metadata
    raise ValueError(f"checkpoint: cannot read the orbax metadata of {str(path)!r} (corrupted "
                     f"or not an orbax checkpoint): {type(err).__name__}: {err}") from None
  saved = _manifest.orbax_leaves(path, tree)
  if manifest is not None:
    _manifest.check_against_orbax(path, manifest, saved)
  return saved


def _user_leaves(saved: dict, manifest) -> dict:
  """The stored leaf table in the user's key names, zero-size arrays included."""
  wrapped = bool(manifest and manifest["wrapped"])
  escaped = bool(manifest and manifest["escaped"])
  out = {}
  for keys, v in saved.items():
    if wrapped:
      keys = keys[1:]
    if escaped:
      keys = tuple(_tree.unescape_key(k) for k in keys)
    out[keys] = v
  for e in (manifest or {}).get("empty_arrays", []):
    out[tuple(e["path"])] = ("empty", tuple(e["shape"]), e["dtype"])
  return out


def restore(path, target=None, *, verify: bool = True):
  """Restores a checkpoint written by :func:`save`, onto the structure and shardings of ``target``.

  In a multi-process job every process calls it with the same path and target; each reads the
  shards its devices hold (``target`` may use a sharding other than the saved one, spanning
  processes) and checks its share of the files' checksums. Errors are raised on every process.

  Args:
    path: the checkpoint directory.
    target: ``None``, or a pytree like the saved one whose leaves are concrete arrays or
      ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape`` or :func:`abstract`). Restored
      arrays take the target's shardings and its container types (NamedTuples, optax states,
      ``nnx.State``); a leaf without a sharding (abstract without one, or an uncommitted
      array) comes back uncommitted on the default device, like ``jnp.asarray``, so it mixes
      with sharded arrays under ``jax.jit``. Without a target, containers come back as dicts
      and lists and arrays on their saved shardings.
    verify: check every file's size and SHA-256 and the manifest's own checksum first
      (detects truncated, corrupted and edited files). ``verify=False`` skips the file
      checksums and also reads plain orbax checkpoints.

  Raises:
    FileNotFoundError: no checkpoint at ``path``.
    ValueError: corrupted or incomplete checkpoint, or a target whose tree, shapes or dtypes do
      not match the checkpoint (the message names the leaf path).

  >>> import tempfile, jax, jax.numpy as jnp
  >>> from jaxprune.checkpoint import save
  >>> d = tempfile.mkdtemp()
  >>> state = {"count": jnp.int32(3), "masks": {"w": jnp.ones(4, bool), "b": None}}
  >>> _ = save(d + "/c", state)
  >>> out = restore(d + "/c", jax.eval_shape(lambda: state))
  >>> int(out["count"]), out["masks"]["b"]
  (3, None)
  """
  operation = _sync.next_operation()
  error = manifest = None
  try:
    path = checked_dir(path)
    manifest = _manifest.read(path, required=verify)
  except Exception as err:
    error = err
  _sync.agree(operation, "open", error)
  what = {"checkpoint path": str(path), "options": f"verify={verify}"}
  if target is not None:
    entries, treedef = _tree.flatten(target)
    what["target structure"] = "\n".join(
        [f"{'/'.join(k)} {getattr(x, 'shape', '')} {getattr(x, 'dtype', '')}"
         for k, x in entries] + [str(treedef)])
  _sync.check_same(operation, "arguments", what)
  try:
    if verify:
      assert manifest is not None  # read(required=True) raises instead
      _manifest.verify_files(path, manifest["files"], _sync.index(), _sync.count())
  except Exception as err:
    error = err
  _sync.agree(operation, "verify", error)
  handler = ocp.StandardCheckpointHandler()
  wrapped = bool(manifest and manifest["wrapped"])
  escaped = bool(manifest and manifest["escaped"])
  empty = (manifest or {}).get("empty_arrays", [])
  finish, target_entries = {}, None
  try:
    saved = _user_leaves(_saved_leaves(path, handler, manifest), manifest)
    if target is None:
      args = ocp.args.StandardRestore()
    else:
      _target.check_target(path, target, saved)
      target_entries = dict(_tree.flatten(target)[0])
      item, finish = _target.orbax_target(target, {tuple(e["path"]) for e in empty})
      if escaped:
        item = _tree.escape_tree(item)
      args = ocp.args.StandardRestore({_manifest.ROOT: item} if wrapped else item)
  except Exception as err:
    error = err
  _sync.agree(operation, "check", error)
  out = None
  try:
    out = handler.restore(epath.Path(path), args=args)
  except Exception as err:  # orbax/tensorstore raise bare Exceptions on unreadable data
    message = str(err).split("\n", 1)[0][:400]
    error = ValueError(f"checkpoint.restore({str(path)!r}) failed to read the data (corrupted "
                       f"checkpoint?): {type(err).__name__}: {message}")
    error.__cause__ = err
  _sync.agree(operation, "read", error)
  if wrapped:
    assert out is not None  # a failed read raised in _sync.agree
    out = out[_manifest.ROOT]
  if escaped:
    out = _tree.unescape_tree(out)
    if target is not None:  # escaping may have reordered dict keys: rebuild target's order
      by_keys = dict(_tree.flatten(out)[0])
      entries, treedef = _tree.flatten(target)
      out = treedef.unflatten([by_keys[k] for k, _ in entries])
  return _target.fill_empty(_target.finish(out, finish), empty, target_entries)


def metadata(path) -> dict | None:
  """The ``metadata=`` dict given to :func:`save` (``None`` when none was given).

  >>> import tempfile, jax.numpy as jnp
  >>> from jaxprune.checkpoint import save
  >>> d = tempfile.mkdtemp()
  >>> _ = save(d + "/c", {"w": jnp.ones(2)}, metadata={"step": 100})
  >>> metadata(d + "/c")
  {'step': 100}
  """
  manifest = _manifest.read(checked_dir(path), required=True)
  assert manifest is not None  # required=True raises instead
  return manifest.get("metadata")


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
  entries, treedef = _tree.flatten(tree)
  out = []
  for keys, x in entries:
    if x is None or not is_array(x):
      out.append(x)
      continue
    if sharding is None:
      s = None if _target.unplaced(x) else getattr(x, "sharding", None)
      s = s if isinstance(s, jax.sharding.Sharding) else None
    elif isinstance(sharding, jax.sharding.Sharding):
      s = sharding
    elif callable(sharding):
      s = sharding("/".join(keys), x)
    else:
      raise TypeError(f"abstract: sharding must be None, a jax.sharding.Sharding or a callable "
                      f"(path, leaf) -> Sharding; got {describe(sharding)}.")
    if s is not None and not isinstance(s, jax.sharding.Sharding):
      raise TypeError(f"abstract: the sharding for {_tree.show(keys)} must be a "
                      f"jax.sharding.Sharding or None; got {describe(s)}.")
    try:
      out.append(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s))
    except ValueError as err:
      raise ValueError(f"abstract: the sharding for {_tree.show(keys)} does not fit its shape "
                       f"{tuple(x.shape)}: {err} Pass a callable sharding=(path, leaf) -> "
                       "Sharding to choose per leaf.") from None
  return treedef.unflatten(out)
