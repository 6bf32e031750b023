"""Masks of sharded scores keep the sharding, and the compiled HLO gathers nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxprune
from jaxprune import masks
from reference import global_reference, topk_reference


def _sharded(mesh):
  rows = NamedSharding(mesh, P("x", None))
  cols = NamedSharding(mesh, P(None, "x"))
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return {
      "a": jax.device_put(jax.random.normal(k1, (64, 48)), rows),
      "b": jax.device_put(jax.random.normal(k2, (40, 16)), cols),
      "c": jax.device_put(jnp.round(jax.random.normal(k3, (16, 24)) * 2), rows),  # many ties
      "bias": jax.device_put(jnp.ones(16), NamedSharding(mesh, P())),
  }


FUNCTIONS = {
    "topk": lambda s, sp: masks.topk(s, sp),
    "global": lambda s, sp: masks.global_topk(s, sp),
    "global_l2": lambda s, sp: masks.global_topk(s, sp, normalize="l2"),
    "previous": lambda s, sp: masks.topk(s, sp, previous=masks.topk(s, sp / 2)),
    "channels": lambda s, sp: masks.channels(s, sp, axis=0),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_masks_keep_sharding_and_hlo_has_no_all_gather(mesh, name):
  scores = jaxprune.scores.magnitude(_sharded(mesh))
  fn = jax.jit(FUNCTIONS[name])
  compiled = fn.lower(scores, 0.7).compile()
  hlo = compiled.as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  out = fn(scores, 0.7)
  for path in ("a", "b", "c"):
    assert out[path].sharding.is_equivalent_to(scores[path].sharding, 2), path
  assert out["bias"] is None


def test_sharded_results_equal_references(mesh):
  scores = jaxprune.scores.magnitude(_sharded(mesh))
  local = jax.jit(masks.topk)(scores, 0.7)
  for path in ("a", "b", "c"):
    np.testing.assert_array_equal(np.asarray(local[path]),
                                  topk_reference(np.asarray(scores[path]), 0.7))
  glob = jax.jit(masks.global_topk)(scores, 0.7)
  want = global_reference([np.asarray(scores[p]) for p in ("a", "b", "c")], 0.7)
  for path, ref in zip(("a", "b", "c"), want):
    np.testing.assert_array_equal(np.asarray(glob[path]), ref)


def test_n_of_m_on_sharded_rows_keeps_sharding(mesh):
  x = jax.device_put(jax.random.normal(jax.random.key(1), (64, 32)),
                     NamedSharding(mesh, P("x", None)))
  out = jax.jit(lambda s: masks.n_of_m(s, 2, 4))({"w": x})["w"]
  assert out.sharding.is_equivalent_to(x.sharding, 2)
  assert np.all(np.asarray(out).reshape(64, 8, 4).sum(-1) == 2)


def test_apply_masks_keeps_sharding(mesh):
  params = _sharded(mesh)
  m = jax.jit(masks.global_topk)(jaxprune.scores.magnitude(params), 0.5)
  out = jax.jit(jaxprune.apply_masks)(params, m)
  for path in params:
    assert out[path].sharding.is_equivalent_to(params[path].sharding, params[path].ndim)


def test_blocks_keep_sharding(mesh):
  x = jax.device_put(jax.random.uniform(jax.random.key(2), (64, 32)),
                     NamedSharding(mesh, P(None, "x")))
  out = jax.jit(lambda s: masks.blocks(s, 0.5, (4, 4)))({"w": x})["w"]
  assert out.sharding.is_equivalent_to(x.sharding, 2)
  assert int(out.sum()) == 64 * 32 // 2
