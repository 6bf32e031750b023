"""Keys orbax would merge, and a manifest that is checked rather than trusted (issue #10, 2-3)."""

import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import checkpoint
from jaxprune.checkpoint import _manifest


def _leaves(tree):
  return [np.asarray(x).tolist() for x in jax.tree.leaves(tree)]


COLLIDING = {
    "dot": lambda: {"a.b": jnp.ones(2), "a": {"b": jnp.zeros(2)}},
    "nested": lambda: {"a": {"b.c": jnp.full(2, 1.0), "b": {"c": jnp.full(2, 2.0)}},
                       "a.b": {"c": jnp.full(2, 3.0)}, "a.b.c": jnp.full(2, 4.0)},
    "percent": lambda: {"a%2Eb": jnp.ones(2), "a.b": jnp.zeros(2), "%": jnp.full(2, 5.0)},
    "in_list": lambda: [{"x.y": jnp.ones(1)}, {"x": {"y": jnp.zeros(1)}}],
    "empty_leaf": lambda: {"e.f": jnp.zeros((0, 2)), "e": {"f": jnp.ones((1, 2))}},
}


@pytest.mark.parametrize("name", sorted(COLLIDING))
def test_keys_that_orbax_joins_with_dots_round_trip(tmp_path, name):
  tree = COLLIDING[name]()
  checkpoint.save(tmp_path / "c", tree)
  for target in (None, tree, jax.eval_shape(lambda: tree)):
    out = checkpoint.restore(tmp_path / "c", target)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    got = jax.tree.map(lambda x: (x.shape, np.asarray(x).tolist()), out)
    want = jax.tree.map(lambda x: (x.shape, np.asarray(x).tolist()), tree)
    assert got == want


def test_plain_keys_are_stored_as_orbax_stores_them(tmp_path):
  checkpoint.save(tmp_path / "c", {"a": {"b": jnp.ones(2)}})
  manifest = json.loads((tmp_path / "c" / _manifest.MANIFEST).read_text())
  assert manifest["escaped"] is False
  checkpoint.save(tmp_path / "d", {"a.b": jnp.ones(2)})
  assert json.loads((tmp_path / "d" / _manifest.MANIFEST).read_text())["escaped"] is True


class Dotted(NamedTuple):
  x: jax.Array


def test_dotted_keys_in_containers_that_cannot_be_rebuilt_are_refused(tmp_path):
  from flax import nnx
  state = nnx.State({"a.b": nnx.Param(jnp.ones(2)), "a": {"b": nnx.Param(jnp.zeros(2))}})
  with pytest.raises(ValueError, match=r"key 'a\.b'.*State.*plain dict"):
    checkpoint.save(tmp_path / "c", state)
  assert not (tmp_path / "c").exists()
  out = checkpoint.restore(checkpoint.save(tmp_path / "d", {"n": Dotted({"p.q": jnp.ones(1)})}))
  assert out["n"]["x"]["p.q"].tolist() == [1.0]


# ---------------------------------------------------------------------- manifest checks


@pytest.fixture()
def saved(tmp_path):
  tree = {"w": jnp.arange(12.0).reshape(3, 4), "z": jnp.zeros((0, 3)), "m": None,
          "n": jnp.arange(3, dtype=jnp.int32)}
  return checkpoint.save(tmp_path / "c", tree), tree


def _edit(path, change, rehash):
  file = Path(path) / _manifest.MANIFEST
  manifest = json.loads(file.read_text())
  change(manifest)
  if rehash:  # a consistent-looking manifest (checksum recomputed): still checked against orbax
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    manifest["sha256"] = _manifest._digest(body)
  file.write_text(json.dumps(manifest))


def _empty_to(keys):
  def change(m):
    m["empty_arrays"][0]["path"] = keys
  return change


def _leaf_shape(m):
  for entry in m["leaves"]:
    if entry[0] == ["w"]:
      entry[1][1] = [4, 3]


def _leaf_dtype(m):
  for entry in m["leaves"]:
    if entry[0] == ["w"]:
      entry[1][2] = "int32"


def _empty_shape(m):
  m["empty_arrays"][0]["shape"] = [3, 3]


EDITS = {  # name: (edit, message once the checksum is recomputed, None: exact data or an error)
    "empty_arrays moved onto a real leaf": (_empty_to(["w"]), "zero-size"),
    "empty_arrays moved onto None": (_empty_to(["m"]), "zero-size"),
    "empty_arrays entry with no zero": (_empty_shape, "zero-size"),
    "empty_arrays dropped": (lambda m: m.update(empty_arrays=[]), "inconsistent"),
    "leaf shape": (_leaf_shape, "inconsistent"),
    "leaf dtype": (_leaf_dtype, "inconsistent"),
    "leaf removed": (lambda m: m.update(leaves=m["leaves"][1:]), "inconsistent"),
    "wrapped flag": (lambda m: m.update(wrapped=True), "inconsistent"),
    "escaped flag": (lambda m: m.update(escaped=True), None),
    "files removed": (lambda m: m.update(files={}), None)}


@pytest.mark.parametrize("name", sorted(EDITS))
@pytest.mark.parametrize("rehash", [False, True])
def test_an_edited_manifest_is_an_error(saved, name, rehash):
  """Edited: the manifest's own SHA-256 fails. Re-signed (checksum recomputed, which no
  corruption does): still cross-checked against orbax's metadata."""
  path, tree = saved
  change, message = EDITS[name]
  _edit(path, change, rehash)
  for target in (tree, jax.eval_shape(lambda: tree), None):
    if not rehash:
      with pytest.raises(ValueError, match="modified or corrupted after the save"):
        checkpoint.restore(path, target)
    elif message is not None:
      with pytest.raises(ValueError, match=message):
        checkpoint.restore(path, target)
    else:  # edits that change nothing that is read still give exact data
      out = checkpoint.restore(path, target)
      assert _leaves(out) == _leaves(tree)
      assert jax.tree.structure(out, is_leaf=lambda x: x is None) == jax.tree.structure(
          tree, is_leaf=lambda x: x is None)


def test_every_single_byte_flip_is_a_clear_error_or_exact_data(saved):
  """Flip one byte at a few offsets of every file: ValueError (never KeyError etc.) or exact."""
  path, tree = saved
  files = sorted(p for p in Path(path).rglob("*") if p.is_file())
  for file in files:
    data = file.read_bytes()
    for offset in sorted({0, len(data) // 3, len(data) // 2, len(data) - 1}):
      flipped = bytearray(data)
      flipped[offset] ^= 0x5A
      file.write_bytes(bytes(flipped))
      try:
        with pytest.raises(ValueError):
          checkpoint.restore(path, tree)
        try:
          out = checkpoint.restore(path, tree, verify=False)
          exact = _leaves(out) == _leaves(tree)
          assert exact or file.name != _manifest.MANIFEST, (file, offset)
        except (ValueError, FileNotFoundError):
          pass
      finally:
        file.write_bytes(data)
  assert _leaves(checkpoint.restore(path, tree)) == _leaves(tree)


def test_old_format_manifest_is_refused_with_advice(saved):
  path, tree = saved
  _edit(path, lambda m: m.update(version=1), rehash=True)
  with pytest.raises(ValueError, match="format version 1.*verify=False"):
    checkpoint.restore(path, tree)


def test_interrupted_replace_points_at_the_previous_checkpoint(saved):
  path, _ = saved
  old = path.parent / f".{path.name}.jaxprune-old"
  path.rename(old)
  with pytest.raises(FileNotFoundError, match="jaxprune-old"):
    checkpoint.restore(path)


def test_leftover_staging_directory_is_replaced(saved):
  path, tree = saved
  staging = path.parent / f".{path.name}.jaxprune-staging"
  staging.mkdir()
  (staging / "junk").write_text("from a crashed save")
  checkpoint.save(path, {"v": jnp.ones(2)}, force=True)
  assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
  assert checkpoint.restore(path)["v"].tolist() == [1.0, 1.0]
