"""regularize.l1 / l2 / group_lasso against closed-form numpy proximal points."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune import regularize


def _step(tx, params, updates, state=None):
  state = tx.init(params) if state is None else state
  out, state = tx.update(updates, state, params)
  return optax.apply_updates(params, out), state


def _soft_np(z, tau):
  return np.sign(z) * np.maximum(np.abs(z) - tau, 0.0)


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=6), jnp.float32)},
          "dense": {"kernel": jnp.asarray(rng.normal(size=(6, 5)) * 0.3, jnp.float32)}}


def test_l1_is_the_soft_threshold_of_params_plus_update():
  params = _params()
  grads = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(1).normal(size=x.shape),
                                             jnp.float32), params)
  tau = 0.4
  tx = optax.chain(optax.sgd(0.1), regularize.l1(tau))
  new, _ = _step(tx, params, grads)
  for path in (("conv", "kernel"), ("dense", "kernel")):
    p, g, n = params[path[0]][path[1]], grads[path[0]][path[1]], new[path[0]][path[1]]
    z = np.asarray(p) - 0.1 * np.asarray(g)
    np.testing.assert_allclose(np.asarray(n), _soft_np(z, tau), rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.asarray(n) == 0, np.abs(z) <= tau)  # exact zeros, exactly there
  np.testing.assert_allclose(new["conv"]["bias"], params["conv"]["bias"] - 0.1 * grads["conv"][
      "bias"], rtol=1e-6)  # biases are not selected by default


def _group_np(z, axis, tau):
  out = np.array(z, np.float64)
  for i in range(z.shape[axis]):
    s = np.take(z, i, axis=axis)
    norm = np.sqrt(np.sum(s.astype(np.float64) ** 2))
    scale = max(0.0, 1.0 - tau / norm) if norm > 0 else 0.0
    idx = [slice(None)] * z.ndim
    idx[axis] = i
    out[tuple(idx)] = s * scale
  return out


@pytest.mark.parametrize("axis", [-1, 2, 0])
def test_group_lasso_per_axis_matches_numpy_and_zeroes_whole_groups(axis):
  params = {"kernel": _params()["conv"]["kernel"]}
  k = np.moveaxis(np.asarray(params["kernel"]), axis, 0)
  tau = float(np.median(np.sqrt((k.reshape(k.shape[0], -1) ** 2).sum(1))))  # half go to zero
  new, _ = _step(optax.chain(optax.sgd(0.0), regularize.group_lasso(tau, groups=axis)), params,
                 params)
  ref = _group_np(np.asarray(params["kernel"]), axis, tau)
  got = np.asarray(new["kernel"])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  zero = np.all(np.moveaxis(got, axis, 0).reshape(got.shape[axis], -1) == 0, axis=1)
  some = np.any(np.moveaxis(got, axis, 0).reshape(got.shape[axis], -1) == 0, axis=1)
  assert 0 < zero.sum() < len(zero), zero  # whole groups zeroed, not all of them
  assert np.array_equal(zero, some)  # never a partly zeroed group


def test_l2_is_proximal_weight_decay_without_zeros():
  params = _params()
  new, _ = _step(optax.chain(optax.sgd(0.0), regularize.l2(0.25)), params, params)
  np.testing.assert_allclose(new["dense"]["kernel"], params["dense"]["kernel"] / 1.25, rtol=1e-6)
  assert bool(jnp.all(new["dense"]["kernel"] != 0))


def test_strength_schedule_follows_the_step_count():
  params = {"w": jnp.full((1, 8), 10.0)}
  schedule = optax.linear_schedule(0.0, 1.0, 4)  # tau = 0, .25, .5, .75, 1, 1, ...
  tx = optax.chain(optax.sgd(0.0), regularize.l1(schedule))
  state, p, seen = tx.init(params), params, []
  step = jax.jit(lambda p, s: _step(tx, p, jax.tree.map(jnp.zeros_like, p), s))
  for _ in range(6):
    new, state = step(p, state)
    seen.append(float(p["w"][0, 0] - new["w"][0, 0]))
    p = new
  np.testing.assert_allclose(seen, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
  assert int(state[1].count) == 6


def test_zeros_come_back_only_when_the_inner_update_beats_the_threshold():
  """Adam's moments keep moving zeroed weights; the prox re-zeroes unless |u| > tau."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
  y = x @ jnp.asarray(rng.normal(size=(8, 3)) * (rng.uniform(size=(8, 3)) < 0.3), jnp.float32)
  loss = lambda p: jnp.mean((x @ p["w"] - y) ** 2)  # noqa: E731
  tau = 0.004
  for inner in (optax.adam(0.01), optax.sgd(0.05, momentum=0.9)):
    adam = inner
    prox = regularize.l1(tau)
    params = {"w": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}
    s_inner, s_prox = adam.init(params), prox.init(params)
    reentered = stayed = 0

    @jax.jit
    def step(params, s_inner, s_prox):
      u, s_inner = adam.update(jax.grad(loss)(params), s_inner, params)
      out, s_prox = prox.update(u, s_prox, params)
      return optax.apply_updates(params, out), u, s_inner, s_prox

    for _ in range(150):
      new, u, s_inner, s_prox = step(params, s_inner, s_prox)
      was_zero = np.asarray(params["w"]) == 0
      back = was_zero & (np.asarray(new["w"]) != 0)
      np.testing.assert_array_equal(back, was_zero & (np.abs(np.asarray(u["w"])) > tau))
      reentered += back.sum()
      stayed += (was_zero & ~back).sum()
      params = new
    assert stayed > 0
    w = np.asarray(params["w"])
    assert 0.2 < np.mean(w == 0) < 1.0, w  # the true zeros (about 70%) are found, exactly


def test_jit_bf16_and_sharding(mesh):
  params = _params()
  tx = optax.chain(optax.adam(0.1), regularize.group_lasso(0.5, groups=-1))
  grads = jax.tree.map(jnp.ones_like, params)
  eager, _ = _step(tx, params, grads)
  jitted, _ = jax.jit(lambda p, g: _step(tx, p, g))(params, grads)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  low = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  out, _ = jax.jit(lambda p, g: _step(optax.chain(optax.sgd(0.0), regularize.l1(0.5)), p, g))(
      low, jax.tree.map(jnp.zeros_like, low))
  k = out["dense"]["kernel"]
  assert k.dtype == jnp.bfloat16
  ref = _soft_np(np.asarray(low["dense"]["kernel"], np.float32), 0.5)
  np.testing.assert_array_equal(np.asarray(k, np.float32) == 0, ref == 0)
  np.testing.assert_allclose(np.asarray(k, np.float32), ref, atol=1e-2)
  sharded = dict(params)
  sharded["dense"] = {"kernel": jax.device_put(jnp.zeros((8, 16)) + 0.3,
                                               NamedSharding(mesh, P(None, "x")))}
  sharded["conv"] = {"kernel": jax.device_put(jnp.ones((3, 3, 4, 8)),
                                              NamedSharding(mesh, P(None, None, None, "x"))),
                     "bias": params["conv"]["bias"]}
  for reg in (regularize.l1(0.1), regularize.group_lasso(0.5, groups=-1)):
    tx = optax.chain(optax.sgd(0.1), reg)
    out, state = jax.jit(lambda p, g: _step(tx, p, g))(sharded, jax.tree.map(jnp.ones_like,
                                                                             sharded))
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(sharded)):
      if isinstance(b.sharding, NamedSharding):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)


def test_network_slimming_selects_norm_scales():
  params = {"bn": {"scale": jnp.array([1.0, 0.05, -0.02, 0.5]), "bias": jnp.ones(4)},
            "dense": {"kernel": jnp.ones((4, 4))}}
  new, _ = _step(optax.chain(optax.sgd(0.0), regularize.l1(0.1, where="bn/scale")), params,
                 params)
  np.testing.assert_allclose(new["bn"]["scale"], [0.9, 0.0, 0.0, 0.4], atol=1e-7)
  np.testing.assert_array_equal(new["dense"]["kernel"], params["dense"]["kernel"])
  np.testing.assert_array_equal(new["bn"]["bias"], params["bn"]["bias"])


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"strength must be finite and >= 0.*-0.1"):
    regularize.l1(-0.1)
  with pytest.raises(TypeError, match="strength must be a real number"):
    regularize.group_lasso("big", groups=-1)
  with pytest.raises(ValueError, match=r"strength\(0\) must be finite and >= 0"):
    regularize.l1(lambda step: -1.0)
  with pytest.raises(TypeError, match="groups must be an int axis"):
    regularize.group_lasso(0.1, groups=1.5)
  params = _params()
  with pytest.raises(ValueError, match=r"axis 3 is out of range for the leaf at 'dense/kernel'"):
    regularize.group_lasso(0.1, groups=3).init(params)
  with pytest.raises(ValueError, match="selected no floating leaf"):
    regularize.l1(0.1, where="nothing_here").init(params)
  tx = regularize.l1(0.1)
  with pytest.raises(ValueError, match="needs the current params"):
    tx.update(params, tx.init(params))
