"""Tests of the export file: quantised round trips, mask codings, key collisions, tampering."""

import hashlib
import json
import pathlib
import struct
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import export, quantize
from jaxprune.export import _codecs, _rans


class Layer(NamedTuple):
  kernel: object
  bias: object


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  params = {"a": Layer(rng.standard_normal((64, 16)).astype(np.float32), np.ones(16, np.float32)),
            "b": [jnp.asarray(rng.standard_normal((32, 8)), jnp.bfloat16)]}
  masks = {"a": Layer(rng.random((64, 16)) < 0.1, None), "b": [jnp.asarray(rng.random((32, 8))
                                                                            < 0.5)]}
  return params, masks


def _same(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("bits,group,symmetric,scale_dtype", [
    (8, None, True, jnp.bfloat16), (4, 32, True, jnp.bfloat16), (8, None, False, jnp.bfloat16),
    (4, 16, False, jnp.bfloat16), (8, None, True, jnp.float32), (4, 16, False, jnp.float32)])
def test_quantized_round_trip_is_bit_exact(tmp_path, bits, group, symmetric, scale_dtype):
  params, masks = _tree()
  opts = dict(group_size=group, symmetric=symmetric, scale_dtype=scale_dtype)
  f = export.save(tmp_path / "q", params, masks, bits=bits, **opts)
  expected = quantize.quantize(params, bits, masks=masks, **opts)
  got, got_masks = export.load(f, quantized=True)
  for e, g in ((expected["a"].kernel, got["a"]["kernel"]), (expected["b"][0], got["b"][0])):
    assert quantize.is_quantized(g) and g.bits == bits and g.dtype == e.dtype
    assert np.dtype(g.scale.dtype) == np.dtype(scale_dtype)
    for field in ("values", "scale", "zero"):
      if getattr(e, field) is None:
        assert getattr(g, field) is None
      else:
        _same(getattr(g, field), getattr(e, field))
  _same(got["a"]["bias"], params["a"].bias)  # without a target: NamedTuples come back as dicts
  dense, dense_masks = export.load(f, jax.eval_shape(lambda: params))
  assert isinstance(dense["a"], Layer) and dense_masks["a"].bias is None
  _same(dense["a"].kernel, quantize.dequantize(expected)["a"].kernel)
  _same(dense["b"][0], quantize.dequantize(expected)["b"][0])
  assert not np.asarray(dense["a"].kernel)[~masks["a"].kernel].any()
  _same(got_masks["a"]["kernel"], masks["a"].kernel)


def _manifest(f):
  data = open(f, "rb").read()
  return json.loads(zlib.decompress(data[52:52 + struct.unpack_from("<8sIQ32s", data)[2]]))


@pytest.mark.parametrize("scale_dtype,storage", [(None, "float32"), (jnp.bfloat16, "bfloat16")])
def test_user_given_float32_scales_round_trip_bit_exactly(tmp_path, scale_dtype, storage):
  """A user's QuantizedLeaf keeps its float32 scales bit for bit; scales that a bfloat16
  holds exactly are stored in 2 bytes."""
  params, masks = _tree()
  q = quantize.quantize(params, 8, masks=masks, scale_dtype=scale_dtype or jnp.float32)
  q = jax.tree.map(lambda x: quantize.QuantizedLeaf(x.values, np.asarray(x.scale, np.float32),
                                                    x.zero, x.bits, x.dtype)
                   if quantize.is_quantized(x) else x, q, is_leaf=quantize.is_quantized)
  f = export.save(tmp_path / "q", q, masks)
  got, _ = export.load(f, quantized=True)
  for e, g in ((q["a"].kernel, got["a"]["kernel"]), (q["b"][0], got["b"][0])):
    assert g.scale.dtype == np.float32
    _same(g.scale, e.scale)
    _same(g.values, e.values)
  entries = [e for e in _manifest(f)["leaves"] if e["kind"] == "quantized"]
  assert [e["scale_storage"] for e in entries] == [storage] * 2
  assert [e["scale_dtype"] for e in entries] == ["float32"] * 2


def test_bfloat16_scales_halve_the_scale_bytes(tmp_path):
  rng = np.random.default_rng(3)
  w = {"w": rng.standard_normal((64, 512)).astype(np.float32)}
  rows = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    f = export.save(tmp_path / np.dtype(dtype).name, w, bits=8, scale_dtype=dtype,
                    compression="none")
    rows[dtype] = export.inspect(f)[0]
  assert rows[jnp.float32]["scale_bytes"] == 4 * 512
  assert rows[jnp.bfloat16]["scale_bytes"] == 2 * 512


def v2_tree():
  """The tree in data/v2.jxp, written by jaxprune's format-2 writer (the commit before format
  3) with ``export.save(path, *v2_tree())``; exact binary fractions, no platform rounding."""
  k = np.arange(16 * 32)
  w = (((k * 37) % 101 - 50) / 16).astype(np.float32).reshape(16, 32)
  m = (((k * 1103515245 + 12345) >> 16) % 10 == 0).reshape(16, 32)  # rice-coded in v2
  u = (((k * 11) % 29 - 14) / 8).astype(np.float32).reshape(32, 16)
  mu = ((k * 5) % 3 != 0).reshape(32, 16)
  params = {
      "int8": quantize.quantize({"w": w}, 8, masks={"w": m})["w"],
      "int4": quantize.quantize({"w": u}, 4, group_size=8, symmetric=False, masks={"w": mu})["w"],
      "float": (w * 2).astype(jnp.bfloat16),
      "dense": np.arange(5, dtype=np.float32) / 4,
      "step": 7,
  }
  masks = {"int8": m, "int4": mu, "float": m, "dense": None, "step": None}
  return params, masks


def test_version_2_files_still_load():
  f = pathlib.Path(__file__).parent / "data" / "v2.jxp"
  assert struct.unpack_from("<8sI", f.read_bytes())[1] == 2
  params, masks = v2_tree()
  got, got_masks = export.load(f, quantized=True)
  for name in ("int8", "int4"):
    for field in ("values", "scale", "zero"):
      e, g = getattr(params[name], field), getattr(got[name], field)
      assert (e is None) == (g is None)
      if e is not None:
        _same(g, e)
    _same(got_masks[name], masks[name])
  dense, _ = export.load(f)
  _same(dense["int8"], quantize.dequantize(params["int8"]))
  _same(dense["float"], np.where(masks["float"], params["float"], 0).astype(jnp.bfloat16))
  _same(dense["dense"], params["dense"])
  assert dense["step"] == 7
  assert [r["mask_coding"] for r in export.inspect(f)][1:4] == ["rice", "bitmap", "rice"]


def test_prequantized_leaves_are_stored_as_they_are(tmp_path):
  params, masks = _tree()
  q = quantize.quantize(params, 4, masks=masks)
  f = export.save(tmp_path / "q", q, masks)  # masks may accompany quantised leaves
  got, _ = export.load(f, quantized=True)
  _same(got["a"]["kernel"].values, q["a"].kernel.values)
  assert export.inspect(f)[0]["bits"] == 4


def test_sizes_shrink_with_quantisation_and_beat_a_bitmap(tmp_path):
  rng = np.random.default_rng(0)
  w = rng.standard_normal((512, 256)).astype(np.float32)
  m = np.abs(w) > np.quantile(np.abs(w), 0.9)
  size = {}
  for bits in (None, 8, 4):
    size[bits] = (tmp_path / str(bits)).stat().st_size if export.save(
        tmp_path / str(bits), {"w": w}, {"w": m}, bits=bits) else 0
  bitmap = w.size / 8
  assert size[None] < bitmap + m.sum() * 4 * 0.85  # shuffled floats compress, mask < bitmap
  assert size[8] < 0.045 * w.nbytes and size[4] < 0.7 * size[8], size
  rows = export.inspect(tmp_path / "8")
  assert rows[0]["mask_coding"] == "rans"


@pytest.mark.parametrize("kind", ["random90", "random50", "channels", "all", "none", "tiny"])
def test_mask_codings_round_trip_and_pick_the_smallest(kind):
  rng = np.random.default_rng(1)
  n = 1 if kind == "tiny" else 4096
  mask = {"random90": rng.random(n) < 0.1, "random50": rng.random(n) < 0.5,
          "channels": np.repeat(rng.random(64) < 0.3, 64), "all": np.ones(n, bool),
          "none": np.zeros(n, bool), "tiny": np.ones(1, bool)}[kind]
  meta, data = _codecs.encode_mask(mask)
  data = _codecs.join(data)  # (encodes a pending rANS stream)
  np.testing.assert_array_equal(_codecs.decode_mask(meta, data, n), mask)
  assert len(data) <= len(np.packbits(mask))
  for compression in ("fast", "none"):
    meta2, data2 = _codecs.encode_mask(mask, compression)
    data2 = _codecs.join(data2)
    np.testing.assert_array_equal(_codecs.decode_mask(meta2, data2, n), mask)
    assert len(data) <= len(data2)
  if kind == "random90":
    entropy = -(0.1 * np.log2(0.1) + 0.9 * np.log2(0.9))
    assert meta["coding"] == "rice" and 8 * len(data) / n < 1.1 * entropy


@pytest.mark.parametrize("tree", [
    {"a.b": 1.0, "a": {"b": 2.0}},
    {"a/b": 1.0, "a": {"b": 2.0}},
    {"1": 2.0, "x": [3.0, {"0": 4.0}]},
    {0: 1.0, 1: {"0": 2.0}},
])
def test_colliding_keys_round_trip(tmp_path, tree):
  params = jax.tree.map(lambda v: np.full((2, 2), v, np.float32), tree)
  masks = jax.tree.map(lambda v: np.ones((2, 2), bool), tree)
  f = export.save(tmp_path / "k", params, masks)
  for target in (None, jax.eval_shape(lambda: params)):
    got, got_masks = export.load(f, target)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
      _same(a, b)


def test_scalars_none_and_unsupported_leaves(tmp_path):
  params = {"x": np.ones(3, np.float32), "n": 3, "f": 0.1, "t": True, "none": None,
            "tup": (np.int32(7), np.zeros((0, 2), np.float32))}
  f = export.save(tmp_path / "s", params)
  got, masks = export.load(f)
  assert got["n"] == 3 and got["f"] == 0.1 and got["t"] is True and got["none"] is None
  assert isinstance(got["tup"], tuple) and int(got["tup"][0]) == 7 and masks["x"] is None
  with pytest.raises(TypeError, match=r"'s'.*only arrays"):
    export.save(tmp_path / "bad", {"s": "text"})
  with pytest.raises(TypeError, match="PRNG key"):
    export.save(tmp_path / "bad", {"k": jax.random.key(0)})
  with pytest.raises(TypeError, match="dict key"):
    export.save(tmp_path / "bad", {(1, 2): np.ones(2)})
  assert not list(tmp_path.glob(".*tmp*"))  # no temporary file is left behind


# ---------------------------------------------------------------------------- damaged files


def _small(tmp_path):
  params = {"w": np.arange(64, dtype=np.float32).reshape(8, 8), "b": np.ones(8, np.float32)}
  masks = {"w": np.eye(8, dtype=bool), "b": None}
  return export.save(tmp_path / "e", params, masks, bits=8)


def _small_rans(tmp_path):
  """A small file whose blobs use the rANS codings (mask gaps, byte planes, 4-bit symbols)."""
  rng = np.random.default_rng(0)
  mask = np.zeros(12 * 64, bool)
  mask[np.cumsum(rng.integers(4, 7, 12 * 16)) % mask.size] = True
  params = {"w": jnp.asarray(rng.standard_normal((12, 64)) * 3, jnp.bfloat16),
            "q": (rng.geometric(0.6, (64, 8)) * rng.choice([-1, 1], (64, 8))).astype(np.float32)}
  masks = {"w": mask.reshape(12, 64), "q": rng.random((64, 8)) < 0.9}
  f = export.save(tmp_path / "r", params, masks, bits=4, where="q", axis=None)
  codings = [(r["mask_coding"], r["values_codec"]) for r in export.inspect(f)]
  assert codings == [("rice", "rans"), ("rans", "rans")], codings
  assert _manifest(f)["leaves"][0]["values"]["packed"] is False  # 4-bit values as symbols
  return f


@pytest.mark.parametrize("make", [_small, _small_rans])
def test_every_flipped_byte_and_every_truncation_is_a_clear_error(tmp_path, make):
  f = make(tmp_path)
  original = open(f, "rb").read()
  blobs = 52 + struct.unpack_from("<8sIQ32s", original)[2]
  # every byte of _small; every byte of _small_rans's blobs (its header and manifest go
  # through the same checks as _small's); the decoders' own checks on damaged rANS codings,
  # without the checksums, are in test_export_rans.py
  step = 1 if make is _small else 7
  for i in [*range(0, blobs, step), *range(blobs, len(original))]:
    damaged = bytearray(original)
    damaged[i] ^= 0x5A
    open(f, "wb").write(bytes(damaged))
    with pytest.raises(ValueError, match="corrupt|not a jaxprune export|newer|edited"):
      export.load(f)
  for cut in range(0, len(original), 7):
    open(f, "wb").write(original[:cut])
    with pytest.raises(ValueError, match="truncated|corrupted|not a jaxprune export"):
      export.load(f)
  open(f, "wb").write(original + b"\0")
  with pytest.raises(ValueError, match="corrupted"):
    export.load(f)


@pytest.mark.parametrize("blob", ["mask", "values"])
def test_unhashed_damage_in_a_rans_stream_names_its_leaf(tmp_path, blob):
  """With verify=False the checksums are skipped: the rANS decoders' own checks (CRC-32,
  final states, word count) still refuse the damaged stream, and the error names the leaf."""
  f = _small_rans(tmp_path)
  meta = _manifest(f)["leaves"][1][blob]  # leaf "w": rANS mask gaps and byte planes
  data = bytearray(open(f, "rb").read())
  start = len(data) - _manifest(f)["blobs_size"] + meta["offset"]
  if blob == "mask":  # the rANS stream of the gaps comes first, then their raw low bits
    end = _rans.stream_end(bytes(data[start:start + meta["length"]]), meta["kept"])
  else:  # the raw low byte plane comes first; the rANS plane ends the blob
    assert meta["planes"] == ["raw", "rans"]
    end = meta["length"]
  data[start + end - 3] ^= 0x10  # inside the stream's words
  open(f, "wb").write(bytes(data))
  with pytest.raises(ValueError, match=r"'w'.*(rANS|CRC).*corrupted"):
    export.load(f, verify=False)
  with pytest.raises(ValueError, match=r"'w' \(" + blob + r"\): checksum mismatch"):
    export.load(f)


def _rewrite(f, edit, rehash=True):
  """Edits the manifest and recomputes its checksum (what a careless tool could do)."""
  data = open(f, "rb").read()
  magic, version, size, _ = struct.unpack_from("<8sIQ32s", data)
  manifest = json.loads(zlib.decompress(data[52:52 + size]))
  edit(manifest)
  body = zlib.compress(json.dumps(manifest).encode())
  digest = hashlib.sha256(body).digest() if rehash else bytes(32)
  open(f, "wb").write(struct.pack("<8sIQ32s", magic, version, len(body), digest) + body
                      + data[52 + size:])


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["leaves"][1].update(shape=[8, 9]), "corrupted"),
    (lambda m: m["leaves"][1].update(shape="8x8"), "bad shape"),
    (lambda m: m["leaves"][1].update(dtype="float99"), "unknown dtype"),
    (lambda m: m["leaves"][1].update(bits=4), "corrupted"),
    (lambda m: m["leaves"][1].update(scale_shape=[3, 8]), "does not tile"),
    (lambda m: m["leaves"][1]["mask"].update(kept=9), "corrupted"),
    (lambda m: m["leaves"][1].pop("values"), "corrupted"),
    (lambda m: m["leaves"][1].update(kind="sparse"), "corrupted"),
    (lambda m: m["leaves"][0]["data"].update(offset=1), "overlap|bounds|corrupted"),
    (lambda m: m["tree"]["dict"].pop(), "do not match"),
    (lambda m: m.update(tree={"dict": [[["s", "w"], {"leaf": 0}], [["s", "w"], {"leaf": 1}]]}),
     "malformed"),
    (lambda m: m.pop("leaves"), "do not match"),
    (lambda m: m.update(version=1), "does not describe"),
    (lambda m: m.update(version=2), "does not describe"),  # the header says 3
    (lambda m: m["leaves"][1].update(scale_storage="int8"), "not a float dtype"),
    (lambda m: m["leaves"][1].update(scale_storage="float32"), "corrupted"),
    (lambda m: m["leaves"][1].pop("scale_dtype"), "unknown dtype"),
])
def test_tampered_manifest_is_a_clear_error(tmp_path, edit, message):
  f = _small(tmp_path)
  _rewrite(f, edit)
  with pytest.raises(ValueError, match=message):
    export.load(f)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["leaves"][0]["values"].update(packed=True), "corrupted"),
    (lambda m: m["leaves"][0]["values"].pop("packed"), "packed"),
    (lambda m: m["leaves"][0]["values"].update(planes=["raw"]), "corrupted"),
    (lambda m: m["leaves"][1]["values"].update(planes=["rans"]), "planes"),
    (lambda m: m["leaves"][1]["values"].update(planes=["rans", "raw"]), "corrupted"),
    (lambda m: m["leaves"][1]["values"].update(planes="rans"), "planes"),
    (lambda m: m["leaves"][1]["mask"].update(k=2), "corrupted"),
    (lambda m: m["leaves"][1]["mask"].update(invert=True), "corrupted"),
    (lambda m: m["leaves"][1]["mask"].update(k=-1), "bad rans parameters"),
    (lambda m: m["leaves"][1]["mask"].update(kept=181), "corrupted"),
])
def test_tampered_rans_manifest_is_a_clear_error(tmp_path, edit, message):
  f = _small_rans(tmp_path)
  _rewrite(f, edit)
  with pytest.raises(ValueError, match=message):
    export.load(f)


def test_transposed_shape_in_an_unhashed_edit_is_caught(tmp_path):
  f = _small(tmp_path)
  _rewrite(f, lambda m: m["leaves"][1].update(shape=[4, 16]), rehash=False)
  with pytest.raises(ValueError, match="checksum"):
    export.load(f)


def test_old_directory_exports_and_other_files(tmp_path):
  (tmp_path / "dir").mkdir()
  with pytest.raises(ValueError, match="not a compressed export"):
    export.load(tmp_path / "dir")
  (tmp_path / "text").write_bytes(b"hello world, this is not an export at all.........")
  with pytest.raises(ValueError, match="not a jaxprune export"):
    export.load(tmp_path / "text")
  export.save(tmp_path / "dir", {"w": np.ones(2)}, force=True)  # replaces the directory
  assert export.load(tmp_path / "dir")[0]["w"].tolist() == [1.0, 1.0]
