"""Tests of jaxprune.export: exact compressed round trips, sizes on disk, BCOO, N:M layout."""

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxprune.masks
from jaxprune import checkpoint, export
from jaxprune.export import PackedLeaf


class Pair(NamedTuple):
  kernel: object
  bias: object


def _bits_of(x):
  x = np.asarray(x)
  return x.dtype, x.shape, x.tobytes()


def assert_bitwise(a, b):
  assert _bits_of(a) == _bits_of(b)


def reference_masked(x, m):
  """Masked params computed independently: pruned entries are +0.0 of the same dtype."""
  x = np.asarray(x)
  out = np.zeros_like(x)
  out[np.asarray(m)] = x[np.asarray(m)]
  return out


def reference_pack(m):
  """Bit packing by hand: entry i is bit 7 - i % 8 of byte i // 8 (row-major)."""
  flat = [bool(v) for v in np.asarray(m).reshape(-1)]
  out = [0] * ((len(flat) + 7) // 8)
  for i, bit in enumerate(flat):
    out[i // 8] |= int(bit) << (7 - i % 8)
  return out


def _random(seed, shape, dtype):
  rng = np.random.default_rng(seed)
  return rng.standard_normal(shape).astype(dtype)


def odd_case():
  rng = np.random.default_rng(0)
  params = {
      "enc": [Pair(_random(1, (8, 6), np.float32), np.ones(6, np.float32)),
              Pair(jnp.asarray(_random(2, (6, 4), jnp.bfloat16)), None)],
      "dense_all_kept": _random(3, (5, 3), np.float16),
      "all_pruned": _random(4, (4, 4), np.float32),
      "zero_size": np.zeros((0, 3), np.float32),
      "ints": np.arange(12, dtype=np.int32).reshape(3, 4),
      "scalar": 1.5,
      "special": np.array([[np.nan, -0.0], [np.inf, 3.0]], np.float32),
  }
  masks = {
      "enc": [Pair(rng.random((8, 6)) < 0.3, None),
              Pair(jnp.asarray(rng.random((6, 4)) < 0.5), None)],
      "dense_all_kept": np.ones((5, 3), bool),    # 0% sparsity
      "all_pruned": np.zeros((4, 4), bool),       # 100% sparsity
      "zero_size": np.zeros((0, 3), bool),
      "ints": np.arange(12).reshape(3, 4) % 3 == 0,
      "scalar": None,
      "special": np.array([[True, True], [False, True]]),
  }
  return params, masks


def _check_decompressed(params, masks, out_params, out_masks):
  flat_p, _ = jax.tree_util.tree_flatten(params)
  flat_m = jax.tree_util.tree_structure(params).flatten_up_to(masks)
  got_p = jax.tree_util.tree_structure(params).flatten_up_to(out_params)
  got_m = jax.tree_util.tree_structure(params).flatten_up_to(out_masks)
  for x, m, y, gm in zip(flat_p, flat_m, got_p, got_m):
    if m is None:
      assert gm is None
      if isinstance(x, float):
        assert x == y
      else:
        assert_bitwise(y, x)
    else:
      assert_bitwise(y, reference_masked(x, m))
      assert_bitwise(gm, np.asarray(m))


# ------------------------------------------------------------------------- compress / decompress


def test_compress_layout_matches_hand_computation():
  params, masks = odd_case()
  c = export.compress(params, masks)
  leaf = c["enc"][0].kernel
  assert isinstance(leaf, PackedLeaf) and leaf.shape == (8, 6)
  assert leaf.bits.dtype == np.uint8 and leaf.bits.tolist() == reference_pack(masks["enc"][0][0])
  x, m = params["enc"][0].kernel, masks["enc"][0].kernel
  kept = [v for v, k in zip(x.reshape(-1).tolist(), m.reshape(-1).tolist()) if k]
  assert leaf.values.tolist() == kept and leaf.values.dtype == np.float32
  assert c["enc"][1].kernel.values.dtype == jnp.bfloat16
  assert c["all_pruned"].values.shape == (0,) and c["zero_size"].bits.shape == (0,)
  assert c["enc"][0].bias is params["enc"][0].bias and c["scalar"] == 1.5
  assert c["enc"][1].bias is None


def test_round_trip_is_bit_exact_on_odd_tree():
  params, masks = odd_case()
  out_params, out_masks = export.decompress(export.compress(params, masks))
  _check_decompressed(params, masks, out_params, out_masks)
  assert isinstance(out_params["enc"][0], Pair)


def test_decompress_jits_and_matches_eager():
  params, masks = odd_case()
  c = export.compress(params, masks)
  c.pop("scalar")
  eager = export.decompress(c)
  jitted = jax.jit(export.decompress)(c)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    assert_bitwise(a, b)


def test_nbytes_follows_the_formula():
  params, masks = odd_case()
  c = export.compress(params, masks)
  leaf = c["enc"][0].kernel
  k = int(masks["enc"][0].kernel.sum())
  assert export.nbytes({"x": leaf}) == 6 + 4 * k  # ceil(48 / 8) mask bytes + k float32


DTYPES = [np.float32, jnp.bfloat16, np.float16, np.int8, np.uint32]


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=3),
       dtype=st.sampled_from(DTYPES), density=st.sampled_from([0.0, 0.1, 0.5, 0.97, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_random_bit_patterns_round_trip(shape, dtype, density, seed):
  """Any bit pattern (NaN payloads, -0.0, subnormals) survives; pruned entries are +0."""
  rng = np.random.default_rng(seed)
  size = int(np.prod(shape))
  raw = rng.integers(0, 256, size * np.dtype(dtype).itemsize, dtype=np.uint8)
  x = raw.view(dtype).reshape(shape)
  m = rng.random(shape) < density
  c = export.compress({"w": x}, {"w": m})
  assert c["w"].bits.tolist() == reference_pack(m)
  assert export.nbytes(c) == (size + 7) // 8 + int(m.sum()) * np.dtype(dtype).itemsize
  p, masks = export.decompress(c)
  assert_bitwise(p["w"], reference_masked(x, m))
  assert_bitwise(masks["w"], m)
  pj, mj = jax.jit(export.decompress)(c)  # the traced path (scan + select on bit patterns)
  assert_bitwise(pj["w"], reference_masked(x, m))
  assert_bitwise(mj["w"], m)


def test_sharded_params_compress_and_load_onto_sharding(tmp_path, mesh):
  sharding = NamedSharding(mesh, P("x"))
  w = jax.device_put(jnp.asarray(_random(0, (16, 8), np.float32)), sharding)
  m = jax.device_put(jnp.asarray(np.random.default_rng(1).random((16, 8)) < 0.2), sharding)
  params = {"w": w, "b": jnp.ones(8)}
  masks = {"w": m, "b": None}
  export.save(tmp_path / "e", params, masks)
  target = checkpoint.abstract(params)
  p, got = export.load(tmp_path / "e", target)
  assert p["w"].sharding == sharding and got["w"].sharding == sharding
  assert_bitwise(p["w"], reference_masked(w, m))
  assert_bitwise(got["w"], np.asarray(m))


# -------------------------------------------------------------------------------- save / load


def _dir_bytes(path):
  """Bytes on disk of a checkpoint directory or of an export file."""
  path = Path(path)
  if path.is_file():
    return path.stat().st_size
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_save_load_round_trip_without_and_with_target(tmp_path):
  params, masks = odd_case()
  export.save(tmp_path / "e", params, masks)
  raw_params, raw_masks = export.load(tmp_path / "e")  # dicts and lists
  assert isinstance(raw_params["enc"][0], dict)
  assert_bitwise(raw_params["enc"][0]["kernel"], reference_masked(params["enc"][0].kernel,
                                                                  masks["enc"][0].kernel))
  assert raw_masks["enc"][0]["bias"] is None
  target = jax.eval_shape(lambda: {k: v for k, v in params.items() if k != "scalar"})
  target["scalar"] = 1.5
  out_params, out_masks = export.load(tmp_path / "e", target)
  assert isinstance(out_params["enc"][1], Pair)
  _check_decompressed(params, masks, out_params, out_masks)


@pytest.mark.parametrize("dtype,limit", [(np.float32, 0.15), (jnp.bfloat16, 0.20)])
def test_size_on_disk_at_90_percent(tmp_path, dtype, limit):
  """f32 at 90% sparsity: <= 15% of the dense checkpoint (bf16: mask weighs twice as much)."""
  rng = np.random.default_rng(0)
  params = {"a": rng.standard_normal((512, 512)).astype(dtype),
            "b": rng.standard_normal((256, 512)).astype(dtype), "bias": np.zeros(512, dtype)}
  masks = {"a": rng.random((512, 512)) < 0.1, "b": rng.random((256, 512)) < 0.1, "bias": None}
  checkpoint.save(tmp_path / "dense", params)
  export.save(tmp_path / "sparse", params, masks)
  ratio = _dir_bytes(tmp_path / "sparse") / _dir_bytes(tmp_path / "dense")
  assert ratio <= limit, ratio
  # and it shrinks with sparsity
  sparser = {k: None if v is None else v & (rng.random(v.shape) < 0.5) for k, v in masks.items()}
  export.save(tmp_path / "sparser", params, sparser)
  assert _dir_bytes(tmp_path / "sparser") < _dir_bytes(tmp_path / "sparse")


def test_save_is_atomic_and_needs_force(tmp_path):
  params = {"w": np.ones((4, 4), np.float32)}
  export.save(tmp_path / "e", params, {"w": np.eye(4, dtype=bool)})
  with pytest.raises(FileExistsError, match="force=True"):
    export.save(tmp_path / "e", params, {"w": np.ones((4, 4), bool)})
  with pytest.raises(ValueError, match=r"'w'.*shape"):  # bad masks: nothing written
    export.save(tmp_path / "e", params, {"w": np.ones((4, 3), bool)}, force=True)
  p, m = export.load(tmp_path / "e")
  assert_bitwise(m["w"], np.eye(4, dtype=bool))
  export.save(tmp_path / "e", params, {"w": np.ones((4, 4), bool)}, force=True)
  assert export.load(tmp_path / "e")[1]["w"].all()


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing"):
    export.load(tmp_path / "missing")
  checkpoint.save(tmp_path / "plain", {"w": jnp.ones(2)})
  with pytest.raises(ValueError, match="not a compressed export"):
    export.load(tmp_path / "plain")
  export.save(tmp_path / "e", {"w": np.ones((4, 4), np.float32), "b": np.ones(4, np.float32)},
              {"w": np.eye(4, dtype=bool), "b": None})
  with pytest.raises(ValueError, match=r"'w'.*shape \(4, 4\)"):
    export.load(tmp_path / "e", {"w": jax.ShapeDtypeStruct((4, 5), jnp.float32),
                                 "b": jax.ShapeDtypeStruct((4,), jnp.float32)})
  with pytest.raises(ValueError, match=r"'w'.*dtype bfloat16"):
    export.load(tmp_path / "e", {"w": jax.ShapeDtypeStruct((4, 4), jnp.bfloat16),
                                 "b": jax.ShapeDtypeStruct((4,), jnp.float32)})
  with pytest.raises(ValueError, match=r"'c'"):
    export.load(tmp_path / "e", {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32),
                                 "c": jax.ShapeDtypeStruct((4,), jnp.float32)})
  values = tmp_path / "e"  # one file: cut its last bytes
  with open(values, "r+b") as f:
    f.truncate(values.stat().st_size - 3)
  with pytest.raises(ValueError, match="corrupted"):
    export.load(tmp_path / "e")


def test_bad_masks_are_rejected_with_paths():
  params = {"layer": {"kernel": np.ones((4, 4), np.float32), "bias": np.ones(4, np.float32)}}
  with pytest.raises(ValueError, match="layer/bias"):
    export.compress(params, {"layer": {"kernel": np.ones((4, 4), bool)}})
  with pytest.raises(ValueError, match=r"'layer/kernel'.*\(4, 2\)"):
    export.compress(params, {"layer": {"kernel": np.ones((4, 2), bool), "bias": None}})
  with pytest.raises(TypeError, match=r"'layer/kernel'.*bool"):
    export.compress(params, {"layer": {"kernel": np.ones((4, 4), np.float32), "bias": None}})
  with pytest.raises(TypeError, match=r"'layer/kernel'"):
    export.compress(params, {"layer": {"kernel": "all", "bias": None}})
  with pytest.raises(TypeError, match="outside jax.jit"):
    jax.jit(lambda p: export.compress(p, {"layer": {"kernel": p["layer"]["kernel"] > 0,
                                                    "bias": None}}))(params)
  ints = export.compress(params, {"layer": {"kernel": np.eye(4, dtype=np.int32), "bias": None}})
  assert ints["layer"]["kernel"].values.tolist() == [1.0] * 4


def test_64_bit_values_need_x64():
  if jax.config.jax_enable_x64:
    pytest.skip("x64 enabled")
  c = export.compress({"w": np.arange(4.)}, {"w": np.ones(4, bool)})
  with pytest.raises(ValueError, match=r"'w'.*jax_enable_x64"):
    export.decompress(c)


def test_corrupted_compressed_tree_is_detected():
  c = export.compress({"w": np.arange(16, dtype=np.float32).reshape(4, 4)}, {"w": np.eye(4, dtype=bool)})
  leaf = c["w"]
  with pytest.raises(ValueError, match=r"'w'.*keeps 4 entries but 3 values"):
    export.decompress({"w": PackedLeaf(leaf.bits, leaf.values[:3], leaf.shape)})
  with pytest.raises(ValueError, match=r"'w'.*uint8\[2\]"):
    export.decompress({"w": PackedLeaf(leaf.bits[:1], leaf.values, leaf.shape)})


# ------------------------------------------------------------------------------------- BCOO


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_bcoo_matmul_equals_dense_masked(dtype):
  rng = np.random.default_rng(0)
  w = rng.integers(-8, 8, (32, 16)).astype(dtype)  # small integers: every sum is exact
  m = rng.random((32, 16)) < 0.2
  x = rng.integers(-4, 4, (16, 5)).astype(dtype)
  sparse = export.to_bcoo(w, m)
  assert sparse.nse == int(m.sum()) and sparse.dtype == w.dtype
  dense = jnp.asarray(reference_masked(w, m)) @ jnp.asarray(x)
  assert_bitwise(sparse @ jnp.asarray(x), dense)
  assert_bitwise(sparse.todense(), reference_masked(w, m))
  wf = rng.standard_normal((32, 16)).astype(np.float32)
  xf = rng.standard_normal((16, 5)).astype(np.float32)
  np.testing.assert_allclose(export.to_bcoo(wf, m) @ xf, reference_masked(wf, m) @ xf,
                             rtol=1e-5, atol=1e-5)


def test_bcoo_edge_cases():
  empty = export.to_bcoo(np.ones((3, 4), np.float32), np.zeros((3, 4), bool))
  assert empty.nse == 0 and not np.asarray(empty @ np.ones(4, np.float32)).any()
  cube = _random(0, (2, 3, 4), np.float32)
  mask = cube > 0
  assert_bitwise(export.to_bcoo(cube, mask).todense(), reference_masked(cube, mask))
  with pytest.raises(ValueError, match="shape"):
    export.to_bcoo(np.ones((3, 4)), np.ones((4, 3), bool))


# -------------------------------------------------------------------------------- N:M layout


def _numpy_n_of_m(scores, n, m, axis):
  """Keep the n largest of every m consecutive entries along axis (numpy reference)."""
  moved = np.moveaxis(scores, axis, -1)
  groups = moved.reshape(moved.shape[:-1] + (-1, m))
  rank = (-groups).argsort(-1, kind="stable").argsort(-1, kind="stable")
  return np.moveaxis((rank < n).reshape(moved.shape), -1, axis)


def test_n_of_m_accepts_masks_from_jaxprune_masks():
  w = _random(0, (8, 16), np.float32)
  mask = np.asarray(jaxprune.masks.n_of_m({"w": jnp.abs(jnp.asarray(w))}, 2, 4, axis=0)["w"])
  assert (mask == _numpy_n_of_m(np.abs(w), 2, 4, 0)).all()
  p, got = export.decompress_n_of_m(export.compress_n_of_m(w, mask, 2, 4, axis=0))
  assert_bitwise(p, reference_masked(w, mask))
  assert_bitwise(got, mask)


@pytest.mark.parametrize("n,m,axis,dtype", [(2, 4, -1, np.float32), (2, 4, 0, jnp.bfloat16),
                                             (1, 4, 1, np.float16), (2, 8, -1, np.float32),
                                             (3, 5, 0, np.float32), (4, 16, -1, np.float32)])
def test_n_of_m_round_trip(n, m, axis, dtype):
  shape = (2 * m, 3 * m) if axis != 1 else (3, 2 * m)
  w = _random(0, shape, dtype)
  mask = _numpy_n_of_m(np.abs(w.astype(np.float32)), n, m, axis)
  leaf = export.compress_n_of_m(w, mask, n, m, axis=axis)
  expected = list(shape)
  expected[axis] = shape[axis] * n // m
  assert leaf.values.shape == tuple(expected) and leaf.values.dtype == np.dtype(dtype)
  bits = {4: 2, 8: 4, 5: 4, 16: 4}[m]
  assert leaf.indices.shape == (-(-leaf.values.size * bits // 8),)
  p, got = export.decompress_n_of_m(leaf)
  assert_bitwise(p, reference_masked(w, mask))
  assert_bitwise(got, mask)
  pj, gj = jax.jit(export.decompress_n_of_m)(leaf)
  assert_bitwise(pj, p)
  assert_bitwise(gj, got)


def test_n_of_m_two_bit_indices_by_hand():
  w = np.array([[1., 2., 3., 4., 5., 6., 7., 8.]], np.float32)
  mask = np.array([[True, False, False, True, False, True, True, False]])
  leaf = export.compress_n_of_m(w, mask, 2, 4)
  assert leaf.values.tolist() == [[1., 4., 6., 7.]]
  # indices 0, 3, 1, 2 at 2 bits each, first in the lowest bits: 0 | 3<<2 | 1<<4 | 2<<6
  assert leaf.indices.tolist() == [0 | 3 << 2 | 1 << 4 | 2 << 6]


def test_n_of_m_groups_with_fewer_kept_and_errors():
  w = np.array([[1., 2., 3., 4.], [5., 6., 7., 8.]], np.float32)
  fewer = np.array([[False, False, True, False], [False, False, False, False]])
  p, got = export.decompress_n_of_m(export.compress_n_of_m(w, fewer, 2, 4))
  assert_bitwise(p, reference_masked(w, fewer))  # params exact; padding slots hold 0
  assert got[fewer].all() and got.sum(axis=1).tolist() == [2, 2]
  with pytest.raises(ValueError, match="keeps 3 > n=2"):
    export.compress_n_of_m(w, np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool), 2, 4)
  with pytest.raises(ValueError, match="not divisible by m=4"):
    export.compress_n_of_m(np.ones((4, 6)), np.ones((4, 6), bool), 2, 4)
  with pytest.raises(ValueError, match="1 <= n <= m"):
    export.compress_n_of_m(w, fewer, 5, 4)
  with pytest.raises(TypeError, match="NofMLeaf"):
    export.decompress_n_of_m({"values": w})


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), extra=st.integers(0, 4), groups=st.integers(1, 4),
       rows=st.integers(1, 3), dtype=st.sampled_from([np.float32, jnp.bfloat16, np.float16]),
       seed=st.integers(0, 2**31 - 1))
def test_n_of_m_random_masks_round_trip(n, extra, groups, rows, dtype, seed):
  """Random bit patterns (NaN payloads included) and random masks with n kept per group."""
  m = n + extra
  rng = np.random.default_rng(seed)
  size = rows * groups * m
  w = rng.integers(0, 256, size * np.dtype(dtype).itemsize, dtype=np.uint8).view(dtype).reshape(
      rows, groups * m)
  order = rng.random((rows, groups, m)).argsort(-1).argsort(-1)
  mask = (order < n).reshape(rows, groups * m)
  p, got = export.decompress_n_of_m(export.compress_n_of_m(w, mask, n, m))
  assert_bitwise(p, reference_masked(w, mask))
  assert_bitwise(got, mask)
