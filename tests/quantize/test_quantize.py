"""Tests of jaxprune.quantize against a loop-by-loop numpy reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxprune
from jaxprune import quantize as qz


def bf16_up(s):
  """The smallest bfloat16 >= a positive finite float32, from its bit pattern."""
  bits = int(np.array(s, np.float32).view(np.uint32))
  return np.array((bits + 0xFFFF) & 0xFFFF0000, np.uint32).view(np.float32)[()]


def reference(w, mask, bits, tile, symmetric, round_scale=lambda s: s):
  """Quantises tile by tile with plain loops: (values, scale, zero or None), float32 math;
  ``round_scale`` maps each float32 scale to the one used (and returned)."""
  w = np.asarray(w, np.float32)
  mask = np.ones(w.shape, bool) if mask is None else np.asarray(mask)
  grid = tuple(s // t for s, t in zip(w.shape, tile))
  values = np.zeros(w.shape, np.int8)
  scale = np.zeros(grid, np.float32)
  zero = np.zeros(grid, np.int8)
  qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
  for g in itertools.product(*(range(n) for n in grid)):
    sl = tuple(slice(i * t, (i + 1) * t) for i, t in zip(g, tile))
    block, keep = w[sl], mask[sl]
    kept = block[keep]
    if symmetric:
      amax = np.float32(np.abs(kept).max()) if kept.size else np.float32(0)
      s = round_scale(amax * np.float32(1 / qmax) if amax > 0 else np.float32(1))
      q = np.clip(np.round(block / s), -qmax, qmax)
      z = 0
    else:
      lo = np.float32(min(kept.min(), 0)) if kept.size else np.float32(0)
      hi = np.float32(max(kept.max(), 0)) if kept.size else np.float32(0)
      s = round_scale((hi - lo) * np.float32(1 / (2 ** bits - 1)) if hi > lo else np.float32(1))
      z = np.clip(qmin - np.round(lo / s), qmin, qmax)
      q = np.clip(np.round(block / s) + z, qmin, qmax)
    q = np.where(keep, q, z)
    values[sl], scale[g], zero[g] = q, s, z
  return values, scale, (None if symmetric else zero)


def dequant_reference(values, scale, zero, tile, dtype):
  full = lambda a: np.kron(a, np.ones(tile, a.dtype)) if a.ndim else a
  v = values.astype(np.int32) - (0 if zero is None else full(zero.astype(np.int32)))
  return (v.astype(np.float32) * full(scale)).astype(dtype)


CASES = [  # shape, axis, group_size, group_axis, expected tile
    ((16, 8), -1, None, -2, (16, 1)),
    ((16, 8), 0, None, -2, (1, 8)),
    ((16, 8), None, None, -2, (16, 8)),
    ((256, 6), -1, 128, -2, (128, 1)),
    ((64, 6), -1, 128, -2, (64, 1)),       # axis shorter than a group: one group
    ((3, 3, 32, 4), -1, 16, -2, (3, 3, 16, 1)),  # conv kernel: groups along input channels
]


@pytest.mark.parametrize("shape,axis,group,gaxis,tile", CASES)
@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, True), (8, False), (4, False)])
def test_matches_reference_and_half_step(shape, axis, group, gaxis, tile, bits, symmetric):
  rng = np.random.default_rng(sum(shape) + bits)
  w = rng.standard_normal(shape).astype(np.float32)
  w.reshape(-1)[0] = 40.0  # a pruned outlier: must not widen its tile's range
  mask = rng.random(shape) < 0.3
  mask.reshape(-1)[0] = False
  q = qz.quantize({"w": w}, bits, axis=axis, group_size=group, group_axis=gaxis,
                  symmetric=symmetric, masks={"w": mask})["w"]
  values, scale, zero = reference(w, mask, bits, tile, symmetric)
  assert q.tile == tile and q.bits == bits and q.values.dtype == jnp.int8
  np.testing.assert_array_equal(np.asarray(q.values), values)
  np.testing.assert_array_equal(np.asarray(q.scale), scale)
  if symmetric:
    assert q.zero is None
  else:
    np.testing.assert_array_equal(np.asarray(q.zero), zero)
  back = np.asarray(qz.dequantize(q))
  np.testing.assert_array_equal(back, dequant_reference(values, scale, zero, tile, np.float32))
  assert (back[~mask] == 0).all() and not np.signbit(back[~mask]).any()  # exactly +0
  step = np.kron(scale, np.ones(tile, np.float32))
  err = np.abs(back - w)[mask]
  assert (err <= 0.5 * step[mask] * (1 + 1e-6)).all(), err.max()


@pytest.mark.parametrize("shape,axis,group,gaxis,tile", [CASES[0], CASES[3], CASES[5]])
@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, True), (8, False), (4, False)])
def test_bfloat16_scales_round_up_and_keep_the_half_step(shape, axis, group, gaxis, tile, bits,
                                                         symmetric):
  rng = np.random.default_rng(sum(shape) + bits + 1)
  w = (rng.standard_normal(shape) * 3).astype(np.float32)
  w.reshape(-1)[0] = -50.0  # a pruned outlier
  mask = rng.random(shape) < 0.3
  mask.reshape(-1)[0] = False
  q = qz.quantize({"w": w}, bits, axis=axis, group_size=group, group_axis=gaxis,
                  symmetric=symmetric, masks={"w": mask}, scale_dtype=jnp.bfloat16)["w"]
  values, scale, zero = reference(w, mask, bits, tile, symmetric, round_scale=bf16_up)
  _, f32_scale, _ = reference(w, mask, bits, tile, symmetric)
  assert q.scale.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(q.scale, np.float32), scale)
  assert (scale >= f32_scale).all() and (scale <= f32_scale * (1 + 2.0 ** -7)).all()
  np.testing.assert_array_equal(np.asarray(q.values), values)
  if not symmetric:
    np.testing.assert_array_equal(np.asarray(q.zero), zero)
  back = np.asarray(qz.dequantize(q))
  assert (back[~mask] == 0).all() and not np.signbit(back[~mask]).any()  # exactly +0
  step = np.kron(scale, np.ones(tile, np.float32))
  err = np.abs(back - w)[mask]
  assert (err <= 0.5 * step[mask] * (1 + 1e-6)).all(), err.max()
  fake = qz.fake_quantize({"w": w}, bits, axis=axis, group_size=group, group_axis=gaxis,
                          symmetric=symmetric, masks={"w": mask}, scale_dtype=jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(fake["w"]), back)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(dtype):
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((32, 8)), dtype)
  mask = jnp.asarray(rng.random((32, 8)) < 0.5)
  q = qz.quantize({"w": w}, 8, masks={"w": mask})["w"]
  values, scale, _ = reference(np.asarray(w, np.float32), np.asarray(mask), 8, (32, 1), True)
  np.testing.assert_array_equal(np.asarray(q.values), values)
  back = qz.dequantize(q)
  assert back.dtype == dtype
  np.testing.assert_array_equal(np.asarray(back, np.float32),
                                dequant_reference(values, scale, None, (32, 1), dtype)
                                .astype(np.float32))
  assert (np.asarray(back)[~np.asarray(mask)] == 0).all()


def test_ties_round_to_even_and_zero_tiles():
  w = jnp.array([[127.0, 0.0], [-63.5, 0.0], [2.5, 0.0], [3.5, 0.0]])
  q = qz.quantize({"w": w}, 8)["w"]  # column 0: scale 1; column 1 all zero: scale 1
  assert q.values[:, 0].tolist() == [127, -64, 2, 4]
  assert q.scale.tolist() == [[1.0, 1.0]] and not np.asarray(q.values[:, 1]).any()


def test_jit_matches_eager_and_keeps_sharding(mesh):
  rng = np.random.default_rng(1)
  w = jax.device_put(jnp.asarray(rng.standard_normal((64, 16)), jnp.float32),
                     NamedSharding(mesh, P("x")))
  masks = {"w": w > 0.2}
  eager = qz.quantize({"w": w}, 4, group_size=16, masks=masks)
  jitted = jax.jit(lambda p, m: qz.quantize(p, 4, group_size=16, masks=m))({"w": w}, masks)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  back = jax.jit(qz.dequantize)(jitted)["w"]
  np.testing.assert_array_equal(np.asarray(back), np.asarray(qz.dequantize(eager)["w"]))


def test_where_and_tree_handling():
  params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}, "ids": jnp.ones((2, 2),
                                                                                       jnp.int32),
            "n": 3}
  masks = {"dense": {"kernel": None, "bias": jnp.array([True, False, True])}, "ids": None,
           "n": None}
  q = qz.quantize(params, 8, masks=masks)
  assert qz.is_quantized(q["dense"]["kernel"]) and q["n"] == 3
  assert q["ids"] is params["ids"]  # the default filter leaves integer leaves alone
  assert q["dense"]["bias"].tolist() == [1.0, 0.0, 1.0]  # not quantised, but masked
  q = qz.quantize(params, 8, where="bias")
  assert qz.is_quantized(q["dense"]["bias"]) and q["dense"]["bias"].scale.shape == (1,)
  assert not qz.is_quantized(q["dense"]["kernel"])
  assert qz.quantize(q, 4)["dense"]["bias"] is q["dense"]["bias"]  # already quantised: kept
  with pytest.raises(TypeError, match=r"'ids'.*floating"):
    qz.quantize(params, 8, where="ids")


def test_option_errors():
  w = {"layer": {"kernel": jnp.ones((100, 4))}}
  with pytest.raises(ValueError, match="between 2 and 8"):
    qz.quantize(w, 16)
  with pytest.raises(TypeError, match="bits"):
    qz.quantize(w, 8.0)
  with pytest.raises(ValueError, match=r"group_size=64 does not divide.*'layer/kernel'"):
    qz.quantize(w, 4, group_size=64)
  with pytest.raises(ValueError, match=r"axis=2 is out of range.*'layer/kernel'"):
    qz.quantize(w, 8, axis=2)
  with pytest.raises(ValueError, match="same axis"):
    qz.quantize(w, 8, axis=0, group_size=10, group_axis=0)
  with pytest.raises(ValueError, match=r"masks.*'layer/kernel'.*shape"):
    qz.quantize(w, 8, masks={"layer": {"kernel": jnp.ones((4, 100), bool)}})
  with pytest.raises(TypeError, match="symmetric"):
    qz.quantize(w, 8, symmetric="yes")
  for bad in (jnp.float16, "int8", None):
    with pytest.raises(TypeError, match="scale_dtype must be jnp.float32 or jnp.bfloat16"):
      qz.quantize(w, 8, scale_dtype=bad)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=0, max_size=41))
def test_int4_packing_round_trip(values):
  v = np.array(values, np.int8)
  packed = np.asarray(qz.pack_int4(v))
  expected = [0] * ((len(values) + 1) // 2)
  for i, x in enumerate(values):  # by hand: low nibble first, two's complement
    expected[i // 2] |= (x & 0xF) << (4 * (i % 2))
  assert packed.dtype == np.uint8 and packed.tolist() == expected
  assert np.asarray(qz.unpack_int4(packed, len(values))).tolist() == values


def test_int4_packing_jax_and_jit_match_numpy():
  v = np.arange(-8, 8, dtype=np.int8).repeat(3)[:47]
  packed = jax.jit(qz.pack_int4)(jnp.asarray(v))
  np.testing.assert_array_equal(np.asarray(packed), qz.pack_int4(v))
  np.testing.assert_array_equal(np.asarray(jax.jit(qz.unpack_int4, static_argnums=1)(packed, 47)),
                                v)


def test_fake_quantize_forward_and_straight_through_gradient():
  rng = np.random.default_rng(2)
  w = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)
  mask = jnp.asarray(rng.random((32, 8)) < 0.4)
  params, masks = {"w": w, "b": jnp.ones(8)}, {"w": mask, "b": None}
  out = qz.fake_quantize(params, 4, group_size=16, masks=masks)
  expected = qz.dequantize(qz.quantize(params, 4, group_size=16, masks=masks))
  np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(expected["w"]))
  assert out["b"] is params["b"]
  c = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)
  g = jax.jit(jax.grad(lambda p: jnp.sum(qz.fake_quantize(p, 4, group_size=16,
                                                          masks=masks)["w"] * c)))(params)
  np.testing.assert_array_equal(np.asarray(g["w"]), np.where(mask, c, 0.0))  # identity on kept
  gb = jax.grad(lambda x: jnp.sum(qz.fake_quantize({"w": x}, 8)["w"] ** 2))(w.astype(jnp.bfloat16))
  assert gb.dtype == jnp.bfloat16


def test_qat_with_keep_sparse_keeps_pruned_at_zero():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((64, 4)), jnp.float32)
  params = {"w": jnp.asarray(rng.standard_normal((16, 4)), jnp.float32), "b": jnp.zeros(4)}
  masks = jaxprune.masks.topk(jaxprune.scores.magnitude(params), 0.75)
  params = jaxprune.apply_masks(params, masks)
  tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), jaxprune.keep_sparse(masks))
  loss = lambda p: jnp.mean((x @ qz.fake_quantize(p, 4, masks=masks)["w"] + p["b"] - y) ** 2)

  @jax.jit
  def step(p, s):
    l, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, l

  state = tx.init(params)
  first = None
  for _ in range(15):
    params, state, l = step(params, state)
    first = l if first is None else first
  assert float(l) < float(first)
  assert (np.asarray(params["w"])[~np.asarray(masks["w"])] == 0).all()
  np.testing.assert_array_equal(np.asarray(jaxprune.masks_of(state)["w"]),
                                np.asarray(masks["w"]))
  back = qz.dequantize(qz.quantize(params, 4, masks=masks))["w"]
  assert (np.asarray(back)[~np.asarray(masks["w"])] == 0).all()


@pytest.mark.parametrize("bits,group,symmetric", [(8, None, True), (4, 128, True),
                                                   (8, None, False)])
def test_qwix_recipe_dequantizes_identically(bits, group, symmetric):
  """The recipe of the jaxprune.quantize docstring (skipped where qwix is not installed)."""
  qwix = pytest.importorskip("qwix")
  w = jax.random.normal(jax.random.key(0), (256, 8))
  masks = jaxprune.masks.topk({"w": jnp.abs(w)}, 0.9)
  q = qz.quantize({"w": w}, bits, group_size=group, symmetric=symmetric, masks=masks)["w"]
  qtype = "int4" if q.bits == 4 else "int8"
  qa = qwix.QArray(qvalue=q.values.astype(qtype), scale=q.scale,
                   zero_point=None if q.zero is None else q.zero.astype(qtype), qtype=qtype)
  np.testing.assert_array_equal(np.asarray(qwix.dequantize(qa)), np.asarray(qz.dequantize(q)))
