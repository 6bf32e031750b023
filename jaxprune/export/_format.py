"""The export file: one self-checking file, written atomically.

Layout of format version 3 (integers little-endian)::

    offset 0   8 bytes   magic b"JAXPRUNE"
    offset 8   uint32    format version (3)
    offset 12  uint64    M, the stored manifest's length in bytes
    offset 20  32 bytes  SHA-256 of the M stored manifest bytes
    offset 52  M bytes   the manifest: UTF-8 JSON (below), zlib-compressed
    52 + M     ...       the blobs, concatenated; nothing after the last one

The manifest is ``{"format": "jaxprune.export", "version": 3, "blobs_size": B, "tree": node,
"leaves": [entry, ...]}``. ``tree`` is the params' container structure, never joined into
names, so no two keys can collide: a node is ``{"dict": [[key, node], ...]}`` (``key`` is
``["s", str]`` or ``["i", int]``), ``{"list": [node, ...]}``, ``{"tuple": [node, ...]}``,
``{"none": null}`` or ``{"leaf": i}`` (an index into ``leaves``). Other pytree nodes
(NamedTuples, dataclasses, flax/nnx containers) are recorded as dicts of their keys (or lists
for indexed children); a ``target`` given to ``load`` restores their types. A leaf entry is

* ``{"kind": "scalar", "type": "float"|"int"|"bool", "value": str}`` (floats as ``float.hex``);
* ``{"kind": "dense", "dtype", "shape", "data": blob}``: every entry;
* ``{"kind": "sparse", "dtype", "shape", "mask": blob, "values": blob}``: the kept entries
  in row-major order and the mask;
* ``{"kind": "quantized", "dtype", "shape", "bits", "mask": blob|null, "values": blob,
  "scale": blob, "scale_shape", "scale_dtype", "scale_storage", "zero": blob|null}``: int
  values (of the kept entries where there is a mask, pruned ones being the zero point),
  scales of shape ``scale_shape`` and dtype ``scale_dtype`` (that of
  ``jaxprune.quantize.QuantizedLeaf.scale``), stored as ``scale_storage``, the narrowest of
  bfloat16, float16 and ``scale_dtype`` that holds every scale exactly, and int8 ``zero``
  points shaped like the scales (the layout of ``QuantizedLeaf``).

A blob is ``{"offset", "length", "sha256", ...}`` (offset from the start of the blobs) plus its
coding:

* value blobs ``{"codec": "raw"|"zlib"|"zlib1"|"lzma"|"rans", "shuffle": bool,
  "raw_length"}``: the values' bytes, shuffled when they are wider than one byte (byte 0 of
  every value first, then byte 1, ...), then compressed (lzma is raw LZMA2, preset 6,
  lc=lp=pb=0). ``"rans"`` adds ``"planes": ["rans"|"raw", ...]``, one per byte plane (one
  plane when not shuffled): the planes one after the other, each an order-0 rANS stream
  (layout in ``jaxprune/export/_rans.py``) or its raw bytes. Quantised values are one int8
  per value, except that for ``bits <= 4`` the blob has ``"packed": true`` (two values per
  byte, ``jaxprune.quantize.pack_int4``, then coded as above) or ``"packed": false`` (one
  rANS symbol per value: the int8's byte);
* mask blobs ``{"coding": "bitmap", "codec", "kept"}`` (row-major, ``np.packbits`` order,
  compressed by ``codec``), or a coding of the gaps between the kept positions, or between
  the pruned ones if ``"invert"`` (layouts in ``jaxprune/export/_gaps.py``):
  ``{"coding": "rice", "kept", "invert", "k", "unary_bits"}`` (Golomb-Rice with parameter
  ``k``) or ``{"coding": "rans", "kept", "invert", "k"}`` (quotients ``gap >> k`` as rANS
  symbols with an escape, ``k`` low bits each).

``load`` reads versions 2 and 3. Version 2 is version 3 without the rANS codings and without
``scale_dtype``/``scale_storage`` (scales are float32) or ``packed`` (4-bit values are always
packed).

``load`` checks, before returning anything: the magic, the version, the file size against
the header and the manifest, the manifest's checksum, every blob's checksum and bounds, and
every decoded size, count and shape against the manifest. The checksums detect corruption
and edits, not a deliberate forgery (which would recompute them): sign files for that.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import struct
import uuid
import zlib

from jaxprune.core import sync_dir

MAGIC = b"JAXPRUNE"
VERSION = 3
READABLE = (2, 3)  # version 2: no rANS codings, float32 scales, 4-bit values always packed
FORMAT = "jaxprune.export"
_HEADER = struct.Struct("<8sIQ32s")


class ExportError(ValueError):
  """An export file is truncated, corrupted, tampered with or not an export."""


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def write(path, manifest: dict, blobs: list[bytes], *, force: bool) -> str:
  """Writes header, manifest and blobs to ``path`` atomically (temp file, fsync, replace)."""
  path = pathlib.Path(path).absolute()
  if path.exists() and not force:
    raise FileExistsError(f"export.save: {str(path)!r} exists; pass force=True to replace it.")
  body = zlib.compress(json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode(), 9)
  header = _HEADER.pack(MAGIC, VERSION, len(body), hashlib.sha256(body).digest())
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
  try:
    with open(tmp, "wb") as f:
      f.write(header)
      f.write(body)
      for blob in blobs:
        f.write(blob)
      f.flush()
      os.fsync(f.fileno())
    if path.is_dir() and not path.is_symlink():  # an old (directory) export: move it aside
      aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
      os.replace(path, aside)
      os.replace(tmp, path)
      shutil.rmtree(aside, ignore_errors=True)
    else:
      os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  sync_dir(path.parent)
  return str(path)


def read(path) -> tuple[dict, memoryview]:
  """The checked manifest and the blob bytes of the export at ``path``."""
  path = pathlib.Path(path)
  where = f"export.load({str(path)!r})"
  if not path.exists():
    raise FileNotFoundError(f"{where}: no such file.")
  if path.is_dir():
    raise ExportError(f"{where}: this is a directory, not a compressed export (written by "
                      "export.save, a single file). An orbax checkpoint is read with "
                      "jaxprune.checkpoint.restore.")
  data = memoryview(path.read_bytes())
  if len(data) < _HEADER.size:
    if bytes(data[:len(MAGIC)]) != MAGIC[:len(data)]:
      raise ExportError(f"{where}: not a jaxprune export (no {MAGIC!r} header).")
    raise ExportError(f"{where}: the file is truncated ({len(data)} bytes, shorter than the "
                      f"{_HEADER.size}-byte header); it is corrupted.")
  magic, version, size, digest = _HEADER.unpack_from(data)
  if magic != MAGIC:
    raise ExportError(f"{where}: not a jaxprune export (starts with {bytes(magic)!r}, expected "
                      f"{MAGIC!r}).")
  if version > VERSION:
    raise ExportError(f"{where}: format version {version} is newer than this jaxprune "
                      f"({VERSION}); upgrade jaxprune.")
  if version not in READABLE:
    raise ExportError(f"{where}: format version {version} is not readable by this jaxprune "
                      f"(it reads versions {READABLE}); the file is corrupted.")
  end = _HEADER.size + size
  if end > len(data):
    raise ExportError(f"{where}: the file is truncated: the header announces a {size}-byte "
                      f"manifest but only {len(data) - _HEADER.size} bytes follow; it is "
                      "corrupted.")
  body = bytes(data[_HEADER.size:end])
  if hashlib.sha256(body).digest() != digest:
    raise ExportError(f"{where}: the manifest's checksum does not match: the file is corrupted "
                      "or its manifest was edited.")
  try:
    manifest = json.loads(zlib.decompress(body))
  except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as err:
    raise ExportError(f"{where}: the manifest is not valid JSON ({err}); corrupted.") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get(
      "version") != version:
    raise ExportError(f"{where}: the manifest does not describe a {FORMAT} version {version} "
                      "file; it is corrupted.")
  blobs = data[end:]
  expected = manifest.get("blobs_size")
  if not isinstance(expected, int) or expected != len(blobs):
    state = "truncated" if isinstance(expected, int) and expected > len(blobs) else "corrupted"
    raise ExportError(f"{where}: the file is {state}: the manifest announces {expected!r} "
                      f"bytes of data, the file holds {len(blobs)}; it is corrupted.")
  return manifest, blobs


def blob(blobs: memoryview, meta, where: str, *, verify: bool) -> bytes:
  """The checked bytes of one blob."""
  if not isinstance(meta, dict):
    raise ExportError(f"{where}: the manifest has {meta!r} where a blob is expected; corrupted.")
  offset, length, digest = meta.get("offset"), meta.get("length"), meta.get("sha256")
  if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset
          and 0 <= length and offset + length <= len(blobs) and isinstance(digest, str)):
    raise ExportError(f"{where}: the manifest's blob {meta!r} is out of the file's bounds "
                      f"({len(blobs)} data bytes); corrupted.")
  out = bytes(blobs[offset:offset + length])
  if verify and sha256(out) != digest:
    raise ExportError(f"{where}: checksum mismatch: the data is corrupted.")
  return out
