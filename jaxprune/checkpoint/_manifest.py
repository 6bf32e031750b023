"""The integrity manifest of a checkpoint: what orbax does not record or check itself.

``jaxprune_checkpoint.json`` holds the size and SHA-256 of every file (each process hashes the
files it wrote itself; the primary adds the ones it wrote while finalising), the leaf table
orbax reported right after the save (path, kind, shape, dtype), the zero-size arrays (which
orbax cannot store), user metadata, and a SHA-256 of all of this, so that an edited or
corrupted manifest is an error, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from jaxprune.checkpoint import _tree

MANIFEST = "jaxprune_checkpoint.json"
FORMAT = "jaxprune.checkpoint"
VERSION = 2
ROOT = "root"  # key under which a bare leaf or an empty tree is wrapped (orbax rejects both)
_OWNER = re.compile(r"process_(\d+)$")


# ----------------------------------------------------------------------------------- files


def sha256(file: Path) -> str:
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def owner(rel: str) -> int:
  """The process that wrote a file: orbax puts per-process files under ``*process_<i>``."""
  for part in rel.split("/"):
    m = _OWNER.search(part)
    if m:
      return int(m.group(1))
  return 0


def file_table(directory: Path, process: int | None = None, skip=()) -> dict[str, dict]:
  """``{relative path: {size, sha256}}`` of the files written by ``process`` (all if None)."""
  table = {}
  for root, _, files in os.walk(directory):
    for name in files:
      full = Path(root) / name
      rel = full.relative_to(directory).as_posix()
      if rel == MANIFEST or rel in skip or (process is not None and owner(rel) != process):
        continue
      table[rel] = {"size": full.stat().st_size, "sha256": sha256(full)}
  return dict(sorted(table.items()))


def verify_files(path: Path, files: dict, process: int, count: int) -> None:
  """Checks this process's share of the files (every ``count``-th, from ``process``)."""
  for j, (rel, expected) in enumerate(sorted(files.items())):
    if j % count != process:
      continue
    file = path / rel
    if not file.is_file():
      raise ValueError(f"checkpoint {str(path)!r} is incomplete: file {rel!r} is missing. "
                       "Restore from another copy or an earlier checkpoint.")
    size = file.stat().st_size
    if size != expected["size"]:
      raise ValueError(
          f"checkpoint {str(path)!r} is corrupted: file {rel!r} has {size} bytes, expected "
          f"{expected['size']} (truncated or partially copied). Restore from another copy.")
    if sha256(file) != expected["sha256"]:
      raise ValueError(
          f"checkpoint {str(path)!r} is corrupted: the SHA-256 of file {rel!r} does not match the "
          "one recorded at save time. Restore from another copy.")


# ------------------------------------------------------------------------------ leaf table


def orbax_leaves(path: Path, tree_metadata) -> dict:
  """``{keys: None | (kind, shape, dtype name)}`` from orbax's metadata tree (as stored)."""
  saved = {}
  for keys, m in _tree.flatten(tree_metadata)[0]:
    if m is None:
      saved[keys] = None
      continue
    kind = "scalar" if isinstance(m, ocp.metadata.ScalarMetadata) else "array"
    shape = getattr(m, "shape", None)
    dtype = getattr(m, "dtype", None)
    try:
      saved[keys] = (kind, None if shape is None else tuple(int(d) for d in shape),
                     None if dtype is None else np.dtype(dtype).name)
    except TypeError as err:
      raise ValueError(f"checkpoint: orbax metadata of {str(path)!r} is unreadable at "
                       f"{_tree.show(keys)}: {err}") from None
  return saved


def leaf_table(saved: dict) -> list:
  return [[list(k), None if v is None else [v[0], list(v[1]) if v[1] is not None else None,
                                            v[2]]] for k, v in sorted(saved.items())]


def leaves_from_table(table) -> dict:
  return {tuple(k): None if v is None else (v[0], None if v[1] is None else tuple(v[1]), v[2])
          for k, v in table}


def with_empty(manifest: dict, saved: dict) -> dict:
  """Orbax's leaf table with the stubs of zero-size arrays marked as such (as recorded)."""
  out = dict(saved)
  for e in manifest["empty_arrays"]:
    out[stored_keys(manifest, e["path"])] = ("empty", tuple(e["shape"]), e["dtype"])
  return out


def check_against_orbax(path: Path, manifest: dict, saved: dict) -> None:
  """The leaf table and zero-size entries of the manifest must match what orbax reads."""
  for e in manifest["empty_arrays"]:
    keys, shape = stored_keys(manifest, e["path"]), tuple(e["shape"])
    if saved.get(keys, "no leaf") != _STUB or 0 not in shape:
      raise ValueError(
          f"checkpoint {str(path)!r} is inconsistent: the manifest lists a zero-size array "
          f"of shape {shape} at {_tree.show(tuple(e['path']))} but orbax holds "
          f"{_describe(saved.get(keys, 'no leaf'))} there. Restore from another copy.")
  if manifest["wrapped"] and any(k[:1] != (ROOT,) for k in saved):
    raise ValueError(f"checkpoint {str(path)!r} is inconsistent: the manifest says the tree is "
                     f"wrapped under {ROOT!r} but orbax's tree is not. Restore from another copy.")
  recorded = leaves_from_table(manifest["leaves"])
  read = with_empty(manifest, saved)
  if recorded != read:
    diff = sorted(set(recorded) ^ set(read)) or sorted(
        k for k in read if recorded.get(k) != read[k])
    k = diff[0]
    raise ValueError(
        f"checkpoint {str(path)!r} is inconsistent: at {_tree.show(k)} the manifest records "
        f"{_describe(recorded.get(k, 'no leaf'))} but orbax reads "
        f"{_describe(read.get(k, 'no leaf'))} (edited or mixed-up files). Restore from another "
        "copy.")


def empty_stub() -> np.ndarray:
  """What orbax stores in place of a zero-size array (which it cannot write): one byte."""
  return np.zeros((1,), np.uint8)


_STUB = ("array", (1,), "uint8")


def stored_keys(manifest: dict, keys) -> tuple[str, ...]:
  """The keys orbax stores for a leaf given by the user's keys (escaped, under the wrapper)."""
  keys = tuple(keys)
  if manifest["escaped"]:
    keys = tuple(_tree.escape_key(k) for k in keys)
  return ((ROOT,) if manifest["wrapped"] else ()) + keys


def _describe(v) -> str:
  if v is None:
    return "None"
  if isinstance(v, str):
    return v
  return f"a {v[0]} of shape {v[1]} and dtype {v[2]}"


# -------------------------------------------------------------------------- write and read


def _digest(body: dict) -> str:
  return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                        ).hexdigest()


def write(directory: Path, body: dict) -> None:
  manifest = {"format": FORMAT, "version": VERSION, **body}
  manifest["sha256"] = _digest(manifest)
  with open(directory / MANIFEST, "w") as f:
    json.dump(manifest, f, indent=1)
    f.flush()
    os.fsync(f.fileno())


_FIELDS = {"wrapped": bool, "escaped": bool, "empty_arrays": list, "leaves": list,
           "files": dict, "processes": int}


def read(path: Path, required: bool) -> dict | None:
  """The manifest of ``path``, with its own checksum and fields checked."""
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
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise ValueError(f"checkpoint: {str(file)!r} is not a jaxprune checkpoint manifest.")
  version = manifest.get("version")
  if isinstance(version, int) and version > VERSION:
    raise ValueError(f"checkpoint: {str(path)!r} was written by a newer jaxprune (format version "
                     f"{version} > {VERSION}); upgrade jaxprune to read it.")
  if version != VERSION:
    raise ValueError(f"checkpoint: {str(path)!r} has manifest format version {version!r}; this "
                     f"jaxprune reads version {VERSION}. Re-save it, or read the orbax data "
                     "without checks with verify=False.")
  body = {k: v for k, v in manifest.items() if k != "sha256"}
  if manifest.get("sha256") != _digest(body):
    raise ValueError(
        f"checkpoint: {str(file)!r} was modified or corrupted after the save (its SHA-256 does "
        "not match its contents), so it cannot be trusted. Restore from another copy, or read "
        "the orbax data without checks with verify=False.")
  for name, kind in _FIELDS.items():
    if not isinstance(manifest.get(name), kind):
      raise ValueError(f"checkpoint: {str(file)!r} has no valid {name!r} entry (expected "
                       f"{kind.__name__}); it is corrupted.")
  for e in manifest["empty_arrays"]:
    try:
      _ = np.dtype(e["dtype"]), tuple(int(d) for d in e["shape"]), tuple(e["path"])
    except (KeyError, TypeError, ValueError) as err:
      raise ValueError(f"checkpoint: {str(file)!r} has a malformed empty_arrays entry {e!r}: "
                       f"{type(err).__name__}: {err}") from None
  return manifest
