"""Atomic, verified save on any number of processes, on orbax's ``StandardCheckpointHandler``.

Steps (every process calls :func:`save`; each step ends in an agreement, see ``_sync``):

1. check: each process checks its tree; the processes compare the path, the tree structure,
   the options and the values of host-local leaves (which only one process writes).
2. prepare: the primary process (0) creates the agreed staging directory
   ``.<name>.jaxprune-staging`` next to ``path``.
3. write: every process writes its own shards with orbax's handler and hashes the files it
   wrote (no process reads another's shards).
4. commit: the primary finalises orbax's data (merging the per-process indices), checks the
   leaf table orbax reports, writes the manifest, then swaps the staging directory into place
   (an existing checkpoint is moved aside first and removed only after the swap).

A failure at any step on any process makes every process raise, and leaves ``path`` as it was.
Orbax's own ``Checkpointer`` is not used here: its barriers are collectives that a failed
process never reaches (the others then hang), and its ``force=True`` deletes the old
checkpoint before the new one is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprune.checkpoint import _manifest, _tree
from jaxprune.core import processes as _sync
from jaxprune.core import describe, is_tracer, sync_dir


def staging_dir(path: Path) -> Path:
  return path.parent / f".{path.name}.jaxprune-staging"


def old_dir(path: Path) -> Path:
  return path.parent / f".{path.name}.jaxprune-old"


def check_savable(tree, path: Path) -> list[dict]:
  """Rejects leaves orbax cannot store (before anything is written); lists zero-size arrays."""
  empty = []
  for keys, x in _tree.flatten(tree)[0]:
    if x is None or _tree.is_scalar(x):
      continue
    where = f"checkpoint.save({str(path)!r}): the leaf at {_tree.show(keys)}"
    if is_tracer(x):
      raise TypeError(f"{where} is a tracer ({describe(x)}). Saving writes files on the host: "
                      "call it outside jax.jit / grad.")
    if isinstance(x, jax.ShapeDtypeStruct):
      raise TypeError(f"{where} is abstract ({describe(x)}); only concrete arrays can be saved. "
                      "Use it as a restore target.")
    if not isinstance(x, (jax.Array, np.ndarray)):
      raise TypeError(
          f"checkpoint.save({str(path)!r}): unsupported leaf at {_tree.show(keys)}: "
          f"{describe(x)} ({type(x).__name__}). Leaves must be jax/numpy arrays, Python or "
          "numpy scalars, or None; keep other values (strings, functions) out of the tree "
          "(e.g. in metadata=).")
    if x.size == 0:
      if _tree.is_key_array(x):
        raise TypeError(f"checkpoint.save({str(path)!r}): zero-size PRNG key arrays are not "
                        f"supported (leaf at {_tree.show(keys)}); drop the leaf from the tree.")
      empty.append({"path": list(keys), "shape": list(x.shape), "dtype": np.dtype(x.dtype).name,
                    "numpy": isinstance(x, np.ndarray)})
  return empty


def _replicated(x):
  """A host-local array as a global array replicated over every process (orbax needs these)."""
  mesh = Mesh(np.array(jax.devices()), ("processes",))
  return jax.make_array_from_single_device_arrays(
      x.shape, NamedSharding(mesh, PartitionSpec()), [jax.device_put(x, d)
                                                       for d in jax.local_devices()])


def _host_local(x) -> bool:
  return isinstance(x, jax.Array) and x.is_fully_addressable


def _stored_tree(tree, empty: list[dict]):
  """What orbax writes: zero-size arrays as a 1-byte stub, host-local arrays replicated
  (multi-process), escaped dict keys, and a wrapper around a bare leaf or an empty tree."""
  drop = {tuple(e["path"]) for e in empty}
  entries, treedef = _tree.flatten(tree)
  multi = _sync.count() > 1
  leaves = []
  for keys, x in entries:
    if keys in drop:
      x = _manifest.empty_stub()
    elif multi and _host_local(x):
      x = _replicated(x)
    leaves.append(x)
  stored = treedef.unflatten(leaves)
  escaped = _tree.needs_escaping(stored)
  if escaped:
    stored = _tree.escape_tree(stored)
  entries, treedef = _tree.flatten(stored)
  wrapped = not entries or jax.tree_util.treedef_is_leaf(treedef)
  if wrapped:
    stored = {_manifest.ROOT: stored}
  return stored, wrapped, escaped


def _describe_call(path: Path, tree, force: bool, metadata) -> dict[str, str]:
  """What every process must agree on, as text (compared by digest)."""
  entries, treedef = _tree.flatten(tree)
  lines, values = [], []
  for keys, x in entries:
    shape = getattr(x, "shape", ())
    dtype = getattr(x, "dtype", type(x).__name__)
    lines.append(f"{'/'.join(keys)} {tuple(shape)} {dtype}")
    if _sync.count() > 1 and x is not None and (not isinstance(x, jax.Array) or _host_local(x)):
      data = jax.random.key_data(x) if _tree.is_key_array(x) else x
      raw = np.ascontiguousarray(np.asarray(data)).tobytes()
      values.append(f"{'/'.join(keys)} {hashlib.sha256(raw).hexdigest()}")
  return {"checkpoint path": str(path), "tree structure": "\n".join(lines + [str(treedef)]),
          "options": f"force={force} metadata={json.dumps(metadata, sort_keys=True)}",
          "values of host-local leaves (numpy, scalars, single-device arrays)": "\n".join(values)}


def own_files(staging: Path) -> dict:
  """The files this process wrote, hashed by this process only."""
  return _manifest.file_table(staging, _sync.index())


def _primary(fn, *args):
  """Runs ``fn`` on the primary process; returns ``(result, error)``."""
  if not _sync.is_primary():
    return None, None
  try:
    return fn(*args), None
  except Exception as err:
    return None, err


def _prepare(path: Path, staging: Path, force: bool) -> None:
  if (path.exists() or path.is_symlink()) and not force:
    raise FileExistsError(f"checkpoint.save: {str(path)!r} already exists. Pass force=True to "
                          "replace it (the old one is kept until the new one is complete).")
  path.parent.mkdir(parents=True, exist_ok=True)
  remove(staging)  # left over by an interrupted save
  staging.mkdir()


def _write(staging: Path, stored) -> str:
  if not staging.is_dir():
    raise FileNotFoundError(
        f"checkpoint.save: process {_sync.index()} cannot see the staging directory "
        f"{str(staging)!r} created by process 0. In a multi-process job the checkpoint path "
        "must be on a file system shared by all processes (e.g. GCS or NFS).")
  ocp.StandardCheckpointHandler().save(epath.Path(staging), args=ocp.args.StandardSave(stored))
  return json.dumps(own_files(staging))


def _commit(path: Path, staging: Path, tables: list[str], body: dict, stored) -> None:
  handler = ocp.StandardCheckpointHandler()
  handler.finalize(epath.Path(staging))
  files = {}
  for table in tables:
    files.update(json.loads(table))
  files.update(_manifest.file_table(staging, skip=set(files)))
  saved = _manifest.orbax_leaves(staging, handler.metadata(epath.Path(staging)).tree)
  stored_arrays = {keys for keys, x in _tree.flatten(stored)[0] if x is not None}
  if stored_arrays != {keys for keys, v in saved.items() if v is not None}:
    raise RuntimeError(f"checkpoint.save({str(path)!r}): orbax reports other leaves than the "
                       "ones given (an orbax change?); nothing was replaced.")
  _manifest.write(staging, {**body, "files": dict(sorted(files.items())),
                            "leaves": _manifest.leaf_table(_manifest.with_empty(body, saved))})
  _swap(path, staging)


def _swap(path: Path, staging: Path) -> None:
  old = old_dir(path)
  remove(old)
  moved_old = False
  try:
    if path.exists() or path.is_symlink():
      os.replace(path, old)
      moved_old = True
    os.replace(staging, path)
  except BaseException:
    if moved_old and not path.exists():
      os.replace(old, path)
    raise
  if moved_old:
    remove(old)
  sync_dir(path.parent)


def save(path, tree, *, force: bool = False, metadata: dict | None = None) -> Path:
  """Saves a pytree (params, masks, optimizer state, ...) as an orbax checkpoint, atomically.

  The checkpoint is written to a staging directory next to ``path`` and moved into place only
  when complete, so a failed save leaves ``path`` as it was (an existing checkpoint is
  replaced only with ``force=True``, and only after the new one is fully written). ``None``
  leaves, NamedTuples, optax states, typed PRNG keys, dict keys containing ``"."`` and sharded
  arrays are supported. Host side: call it outside ``jax.jit``.

  Multi-process jobs (``jax.distributed``, e.g. a Cloud TPU pod slice): call it on every
  process with the same path and tree. Each process writes and checksums its own shards;
  process 0 finalises. Host-local leaves (numpy arrays, scalars, single-device arrays such
  as optimizer step counts) must be equal on every process (checked) and are written once.
  A failure on any process raises on every process, and a mismatch of path or tree structure
  is a ``ValueError`` on every process, not a hang. ``path`` must be on a file system that
  all processes share.

  Args:
    path: directory to create (local or mounted file system).
    tree: any pytree of jax/numpy arrays, Python/numpy scalars and ``None``.
    force: replace an existing checkpoint at ``path``.
    metadata: optional JSON-serialisable dict stored alongside (see :func:`metadata`).

  Returns:
    The absolute path of the checkpoint.

  >>> import tempfile, jax.numpy as jnp
  >>> from jaxprune.checkpoint import restore
  >>> d = tempfile.mkdtemp()
  >>> _ = save(d + "/ckpt", {"w": jnp.ones((2, 2)), "mask": None})
  >>> restore(d + "/ckpt")["w"].tolist()
  [[1.0, 1.0], [1.0, 1.0]]
  """
  operation = _sync.next_operation()
  path = Path(os.fspath(path)).absolute()
  staging = staging_dir(path)
  error = stored = None
  body = {}
  try:
    empty = check_savable(tree, path)
    _tree.check_escapable(tree, f"checkpoint.save({str(path)!r})")
    if metadata is not None:
      try:
        json.dumps(metadata)
      except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint.save({str(path)!r}): metadata must be JSON-serialisable "
                        f"(dicts, lists, str, numbers); got {describe(metadata)}: {err}") from None
    described = _describe_call(path, tree, force, metadata)
  except Exception as err:
    error = err
  _sync.agree(operation, "check", error)
  _sync.check_same(operation, "arguments", described)
  try:
    stored, wrapped, escaped = _stored_tree(tree, empty)
    body = {"wrapped": wrapped, "escaped": escaped, "empty_arrays": empty, "metadata": metadata,
            "processes": _sync.count()}
  except Exception as err:
    error = err
  _sync.agree(operation, "convert", error)
  _, error = _primary(_prepare, path, staging, force)
  _sync.agree(operation, "prepare", error)
  try:
    try:
      table, error = _write(staging, stored), None
    except Exception as err:
      table, error = "{}", err
    _sync.agree(operation, "write", error)
    tables = _sync.exchange(operation, "files", table)
    _, error = _primary(_commit, path, staging, tables, body, stored)
    _sync.agree(operation, "commit", error)
  except BaseException:
    if _sync.is_primary():
      remove(staging)
    raise
  return path


def remove(p: Path) -> None:
  if p.is_dir() and not p.is_symlink():
    shutil.rmtree(p, ignore_errors=True)
  else:
    p.unlink(missing_ok=True)
