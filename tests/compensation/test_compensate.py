"""compensate: closed-form constrained optima on quadratics, exact zeros, jit, sharding, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune import apply_masks, masks as masks_lib, scores
from jaxprune.compensation import compensate
from jaxprune.scores import ModelLoss

DIM = 7


def _quadratic(p, q, b):
  """½ wᵀQw − bᵀw over the concatenation of a (3,) leaf and a (2, 2) leaf."""
  w = jnp.concatenate([p["a"], p["m"].reshape(-1)])
  return 0.5 * w @ q @ w - b @ w


def _split(w):
  return {"a": w[:3], "m": w[3:].reshape(2, 2)}


def _closed_form(q, b, w, keep, damping, gradient):
  """argmin over δ_K of ½δᵀ(Q+λI)δ + [g]ᵀδ with δ_P = −w_P, by a dense solve."""
  k, p = np.flatnonzero(keep), np.flatnonzero(~keep)
  g = q @ w - b if gradient else np.zeros_like(w)
  a = q[np.ix_(k, k)] + damping * np.eye(len(k))
  rhs = q[np.ix_(k, p)] @ w[p] - g[k]
  out = np.zeros_like(w)
  out[k] = w[k] + np.linalg.solve(a, rhs)
  return out


_SOLVE = jax.jit(lambda p, m, q, b, lam, g: compensate(
    _quadratic, p, m, q, b, steps=DIM, damping=lam, damping_mode="absolute", method="hessian",
    tol=0.0, gradient=g, backtrack=0), static_argnums=5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), damping=st.sampled_from([0.0, 1e-3, 0.5]),
       gradient=st.booleans(), pruned=st.integers(1, 5))
def test_reaches_closed_form_constrained_optimum(seed, damping, gradient, pruned):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(DIM, DIM))
  q = a @ a.T + 0.5 * np.eye(DIM)
  b, w = rng.normal(size=DIM), rng.normal(size=DIM)
  keep = np.ones(DIM, bool)
  keep[rng.choice(DIM, pruned, replace=False)] = False
  ref = _closed_form(q, b, w, keep, damping, gradient)
  masked = np.where(keep, w, 0.0)
  value = lambda v: 0.5 * v @ q @ v - b @ v
  if value(ref) > value(masked) + 1e-6 * abs(value(masked)):
    ref = masked  # the full step would raise the loss: compensate falls back to plain masking
  masks = {"a": jnp.asarray(keep[:3]), "m": jnp.asarray(keep[3:].reshape(2, 2))}
  out = _SOLVE(_split(jnp.asarray(w, jnp.float32)), masks, jnp.asarray(q, jnp.float32),
               jnp.asarray(b, jnp.float32), damping, gradient)
  got = np.concatenate([np.asarray(out["a"]), np.asarray(out["m"]).reshape(-1)])
  np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
  assert np.all(got[~keep] == 0.0)


def test_ggn_on_least_squares_is_the_kept_column_regression():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 6)).astype(np.float32)
  w_true = rng.normal(size=(6, 2)).astype(np.float32)
  y = x @ w_true + 0.1 * rng.normal(size=(40, 2)).astype(np.float32)
  dense = np.linalg.lstsq(x, y, rcond=None)[0]
  model = ModelLoss(lambda p, x: x @ p["w"], lambda o, t: 0.5 * jnp.mean(jnp.sum((o - t)**2,
                                                                               -1)))
  keep = np.array([[1, 0], [1, 1], [0, 1], [1, 1], [0, 0], [1, 1]], bool)
  out = jax.jit(lambda p, m: compensate(model, p, m, x, y, damping=0.0, tol=1e-7))(
      {"w": jnp.asarray(dense)}, {"w": jnp.asarray(keep)})
  for j in range(2):  # each output column is an independent least-squares problem
    cols = np.flatnonzero(keep[:, j])
    ref = np.linalg.lstsq(x[:, cols], y[:, j], rcond=None)[0]
    np.testing.assert_allclose(np.asarray(out["w"])[cols, j], ref, rtol=1e-3, atol=1e-4)
  assert np.all(np.asarray(out["w"])[~keep] == 0.0)


def _mlp(key, dims=(8, 32, 4)):
  keys = jax.random.split(key, len(dims) - 1)
  return [{"kernel": jax.random.normal(k, (a, b)) / np.sqrt(a), "bias": jnp.zeros(b)}
          for k, a, b in zip(keys, dims[:-1], dims[1:])]


def _apply(params, x):
  for i, layer in enumerate(params):
    x = x @ layer["kernel"] + layer["bias"]
    x = jnp.tanh(x) if i < len(params) - 1 else x
  return x


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


MODEL = ModelLoss(_apply, _xent)


def _trained():
  x = jax.random.normal(jax.random.key(1), (128, 8))
  teacher = _mlp(jax.random.key(2))
  y = jnp.argmax(_apply(teacher, x), -1)
  params, opt = _mlp(jax.random.key(3)), optax.adam(3e-2)
  state = opt.init(params)

  @jax.jit
  def train(params, state):
    def step(carry, _):
      p, s = carry
      updates, s = opt.update(jax.grad(MODEL)(p, x, y), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(step, (params, state), None, length=150)[0][0]

  return train(params, state), x, y


def test_mlp_loss_drops_after_compensation_and_dtypes_are_kept():
  params, x, y = _trained()
  masks = masks_lib.topk(scores.magnitude(params), 0.5)
  pruned = apply_masks(params, masks)
  run = jax.jit(lambda p, m, method: compensate(MODEL, p, m, x, y, method=method,
                                                damping=1e-3, damping_mode="absolute"),
                static_argnums=2)
  for method in ("ggn", "hessian"):
    out = run(params, masks, method)
    assert float(MODEL(out, x, y)) < 0.5 * float(MODEL(pruned, x, y)), method  # 0.14 -> 0.05
    for new, old, m in zip(jax.tree.leaves(out), jax.tree.leaves(params),
                           jax.tree.leaves(masks)):
      assert new.dtype == old.dtype
    for layer, mask in zip(out, masks):
      assert bool(jnp.all(jnp.where(mask["kernel"], True, layer["kernel"] == 0.0)))
  frozen = jax.jit(lambda p, m: compensate(MODEL, p, m, x, y, trainable="kernel"))(params, masks)
  for layer, old in zip(frozen, params):
    np.testing.assert_array_equal(layer["bias"], old["bias"])


def test_cg_steps_decrease_the_quadratic_model_monotonically():
  params, x, y = _trained()
  masks = masks_lib.topk(scores.magnitude(params), 0.8)
  run = jax.jit(lambda p, m, steps: compensate(MODEL, p, m, x, y, steps=steps, damping=1e-3,
                                               damping_mode="absolute", backtrack=0),
                static_argnums=2)

  def model_value(new):  # ½ δᵀGδ + ½ λ‖δ_kept‖² around the dense params, δ = new − params
    delta = jax.tree.map(lambda a, b: a - b, new, params)
    kept = apply_masks(delta, masks)
    g_delta = scores.ggn_vp(_apply, _xent, params, delta, x, y)
    return sum(float(jnp.vdot(d, gd) + 1e-3 * jnp.vdot(k, k)) / 2 for d, gd, k in zip(
        jax.tree.leaves(delta), jax.tree.leaves(g_delta), jax.tree.leaves(kept)))

  outs = [run(params, masks, s) for s in (0, 1, 3, 10, 50)]
  assert float(MODEL(outs[0], x, y)) == pytest.approx(
      float(MODEL(apply_masks(params, masks), x, y)))
  values = [model_value(o) for o in outs]
  assert all(b <= a * (1 + 1e-4) for a, b in zip(values, values[1:])), values
  assert values[-1] < 0.8 * values[0], values  # 0.048 -> 0.031
  assert float(MODEL(outs[-1], x, y)) < float(MODEL(outs[0], x, y))


def test_indefinite_hessian_stops_without_nans():
  loss = lambda p: jnp.sum(jnp.array([1.0, -2.0, 3.0, 0.5]) * p["w"] ** 2) + p["w"] @ p["w"][::-1]
  out = compensate(loss, {"w": jnp.array([1.0, 2.0, 3.0, 4.0])},
                   {"w": jnp.array([True, True, True, False])}, method="hessian", steps=20)
  assert bool(jnp.all(jnp.isfinite(out["w"]))) and float(out["w"][3]) == 0.0


def test_sharded_and_bf16_params(mesh):
  params, x, y = _trained()
  params = [{"kernel": l["kernel"], "bias": l["bias"]} for l in params]
  masks = masks_lib.topk(scores.magnitude(params), 0.5)
  run = jax.jit(lambda p, m: compensate(MODEL, p, m, x, y, steps=20, damping=1e-3,
                                        damping_mode="absolute"))
  ref = run(params, masks)
  spec = [P(None, "x"), P("x", None)]
  sharded = [{"kernel": jax.device_put(l["kernel"], NamedSharding(mesh, s)), "bias": l["bias"]}
             for l, s in zip(params, spec)]
  out = run(sharded, masks)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  assert out[0]["kernel"].sharding.is_equivalent_to(sharded[0]["kernel"].sharding, 2)
  low = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  out = run(low, masks)
  assert out[0]["kernel"].dtype == jnp.bfloat16
  loss = lambda p: float(MODEL(jax.tree.map(lambda a: a.astype(jnp.float32), p), x, y))
  assert loss(out) < loss(apply_masks(low, masks))


def test_bad_inputs():
  params = _mlp(jax.random.key(0))
  x, y = jnp.ones((4, 8)), jnp.zeros(4, jnp.int32)
  masks = masks_lib.topk(scores.magnitude(params), 0.5)
  with pytest.raises(ValueError, match="same tree structure"):
    compensate(MODEL, params, masks[:1], x, y)
  bad = [dict(m) for m in masks]
  bad[1]["kernel"] = jnp.ones((4, 32), bool)
  with pytest.raises(ValueError, match=r"masks at '1/kernel' has shape \(4, 32\)"):
    compensate(MODEL, params, bad, x, y)
  bad[1]["kernel"] = jnp.ones((32, 4), jnp.complex64)
  with pytest.raises(TypeError, match=r"'1/kernel' must be a bool array"):
    compensate(MODEL, params, bad, x, y)
  with pytest.raises(TypeError, match=r"damping must be a real number >= 0; got .*'strong'"):
    compensate(MODEL, params, masks, x, y, damping="strong")
  with pytest.raises(TypeError, match="tol must be a real number"):
    compensate(MODEL, params, masks, x, y, tol=[1e-5])
  with pytest.raises(ValueError, match="damping_mode must be one of"):
    compensate(MODEL, params, masks, x, y, damping_mode="scaled")
  with pytest.raises(ValueError, match="shared leading example axis|sharing a leading"):
    compensate(lambda p, x, y: MODEL(p, x, y), params, masks, x, y[:2],
               method="empirical_fisher")
  with pytest.raises(ValueError, match="backtrack must be >= 0"):
    compensate(MODEL, params, masks, x, y, backtrack=-1)
  with pytest.raises(ValueError, match="must return a floating scalar"):
    compensate(lambda p, x, y: _apply(p, x), params, masks, x, y)
  with pytest.raises(TypeError, match="ModelLoss"):
    compensate(lambda p, x, y: MODEL(p, x, y), params, masks, x, y, method="ggn")
  with pytest.raises(ValueError, match="damping must be >= 0"):
    compensate(MODEL, params, masks, x, y, damping=-1.0)
  with pytest.raises(ValueError, match="method must be one of"):
    compensate(MODEL, params, masks, x, y, method="fisher")
  with pytest.raises(ValueError, match="steps must be >= 0"):
    compensate(MODEL, params, masks, x, y, steps=-1)
