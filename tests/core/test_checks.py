"""jaxprune.core: the argument checks, the extras rule and placement, written once."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import core


def test_check_int():
  assert core.check_int(np.int64(3), "every", minimum=1) == 3
  with pytest.raises(ValueError, match="prune: every must be >= 1; got 0"):
    core.check_int(0, "every", minimum=1, context="prune")
  with pytest.raises(TypeError, match="begin must be a Python int >= 0; got 2.5"):
    core.check_int(2.5, "begin")
  with pytest.raises(TypeError, match="bool"):
    core.check_int(True, "begin")
  traced = jnp.int32(4)
  assert core.check_int(traced, "every", arrays=True) is traced
  with pytest.raises(ValueError, match=">= 5"):
    core.check_int(jnp.int32(4), "every", minimum=5, arrays=True)
  with pytest.raises(TypeError, match="an int .or an integer 0-d array"):
    core.check_int(jnp.float32(4), "every", arrays=True)


def test_check_key():
  assert jax.dtypes.issubdtype(core.check_key(3).dtype, jax.dtypes.prng_key)
  legacy = jax.random.PRNGKey(0)
  assert core.check_key(legacy) is legacy
  for bad in (None, "seed", 1.5, True, jnp.ones(3)):
    with pytest.raises(TypeError, match="scores.random: key must be a jax.random.key"):
      core.check_key(bad, "scores.random")


def test_at_least_f32():
  assert core.at_least_f32(jnp.ones(2, jnp.float16)).dtype == jnp.float32
  assert core.at_least_f32(np.ones(2, np.float64)).dtype == np.float64  # precision kept


def test_keywords_rule():
  def score(params, grads, scale=1.0):
    return params

  kw = core.Keywords.of(score, "score")
  assert kw.pick({"grads": 1, "batch": 2, "scale": 3}) == {"grads": 1, "scale": 3}
  with pytest.raises(ValueError, match=r"score .*score needs the argument\(s\) \['grads'\]"):
    kw.pick({"batch": 2})
  assert core.Keywords.of(lambda p, **kw: p, "score").pick({"a": 1}) == {"a": 1}
  partial = core.Keywords.of(functools.partial(score, scale=2.0), "score")
  assert partial.pick({"grads": 1, "key": 0}) == {"grads": 1}
  select = core.Keywords.of(lambda s, sp, where=None, previous=None, batch=None: s, "select",
                            positional=2, reserved=("where", "previous"))
  assert select.pick({"batch": 1, "where": 2}) == {"batch": 1}
  with pytest.raises(TypeError, match="positional-only"):
    core.Keywords.of(lambda p, g, /: p, "score")


def test_count_dtype():
  assert core.count_dtype(2**31 - 2) == jnp.int32
  if not jax.config.jax_enable_x64:
    with pytest.raises(ValueError, match="jax_enable_x64"):
      core.count_dtype(2**31)


def test_placement(mesh):
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
  params = {"w": jax.device_put(jnp.ones((8, 2)), sharding)}
  assert core.mesh_of(params) is mesh
  count = core.replicated_like(jnp.zeros([], jnp.int32), params)
  assert count.sharding.is_fully_replicated and count.sharding.mesh == mesh
  mask = core.sharded_like(jnp.ones((8, 2), bool), params["w"])
  assert mask.sharding == sharding
  assert core.mesh_of({"w": jnp.ones(2)}) is None


def test_mask_leaves_one_rule():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  out = core.mask_leaves(params, {"w": jnp.array([[0.0, 2.0], [-1.0, 0.0]]), "b": None})
  assert out[0] is None and out[1].tolist() == [[False, True], [True, False]]
  with pytest.raises(TypeError, match="bool array"):
    core.mask_leaves(params, {"w": jnp.ones((2, 2), jnp.complex64), "b": None})
