"""Hessian/GGN-vector products and curvature diagonals against dense references on tiny models."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune import scores
from jaxprune.scores import ModelLoss
from jaxprune.scores._diag import rademacher

N, D_IN, D_HID, D_OUT = 6, 3, 4, 3


def _mlp_params(key, dtype=jnp.float32):
  """An odd pytree: a list with a None and an int leaf, a tuple, and a nested dict."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {
      "layers": [
          {"w": jax.random.normal(k1, (D_IN, D_HID), dtype), "b": 0.1 * jax.random.normal(
              k2, (D_HID,), dtype)},
          None,
          (jax.random.normal(k3, (D_HID, D_OUT), dtype), 0.1 * jax.random.normal(
              k4, (D_OUT,), dtype)),
      ],
      "step": 7,  # a non-floating leaf: held fixed, returned as None
  }


def _apply(p, x):
  h = jnp.tanh(x @ p["layers"][0]["w"] + p["layers"][0]["b"])
  w, b = p["layers"][2]
  return h @ w + b


def _xent(logits, y):
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


MODEL = ModelLoss(_apply, _xent)


def _data(key=jax.random.key(1)):
  kx, ky = jax.random.split(key)
  return jax.random.normal(kx, (N, D_IN)), jax.random.randint(ky, (N,), 0, D_OUT)


def _flat(params):
  """(flat float vector, unravel) over the floating leaves only."""
  floats = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else None, params)
  flat, unravel = ravel_pytree(floats)
  merge = lambda f: jax.tree.map(lambda new, old: old if new is None else new, unravel(f),
                                 params, is_leaf=lambda x: x is None)
  return flat, unravel, merge


def _dense_hessian(loss_fn, params, *args):
  flat, unravel, merge = _flat(params)
  return flat, unravel, jax.jit(jax.hessian(lambda f: loss_fn(merge(f), *args)))(flat)


def _dense_ggn(params, x, y):
  flat, unravel, merge = _flat(params)
  out = _apply(params, x)
  jac = jax.jit(jax.jacobian(lambda f: _apply(merge(f), x).reshape(-1)))(flat)  # (N*C, n)
  h_out = jax.jit(jax.hessian(lambda o: _xent(o.reshape(out.shape), y)))(out.reshape(-1))
  return flat, unravel, jac.T @ h_out @ jac


def _tree_flat(tree):
  return ravel_pytree(jax.tree.map(lambda x: x, tree))[0]


def test_hvp_matches_dense_hessian():
  params, (x, y) = _mlp_params(jax.random.key(0)), _data()
  flat, unravel, hess = _dense_hessian(MODEL, params, x, y)
  v = jax.random.normal(jax.random.key(5), flat.shape)
  out = jax.jit(lambda p, v: scores.hvp(MODEL, p, v, x, y))(params, _with_step(unravel(v)))
  assert out["step"] is None and out["layers"][1] is None
  np.testing.assert_allclose(_tree_flat(out), hess @ v, rtol=2e-5, atol=2e-6)


def _with_step(tree):
  tree = dict(tree)
  tree["step"] = 0
  return tree


def test_ggn_vp_matches_explicit_jt_h_j():
  params, (x, y) = _mlp_params(jax.random.key(2)), _data()
  flat, unravel, ggn = _dense_ggn(params, x, y)
  v = jax.random.normal(jax.random.key(6), flat.shape)
  out = jax.jit(lambda p, v: scores.ggn_vp(_apply, _xent, p, v, x, y))(
      params, _with_step(unravel(v)))
  np.testing.assert_allclose(_tree_flat(out), ggn @ v, rtol=2e-5, atol=2e-6)
  assert float(v @ ggn @ v) >= 0.0  # the reference is PSD, unlike the Hessian


def test_ggn_equals_hessian_for_linear_least_squares():
  x = jax.random.normal(jax.random.key(0), (5, 3))
  params = {"w": jax.random.normal(jax.random.key(1), (3, 2))}
  v = {"w": jax.random.normal(jax.random.key(2), (3, 2))}
  mse = lambda o, t: 0.5 * jnp.mean(jnp.sum((o - t) ** 2, -1))
  apply = lambda p, x: x @ p["w"]
  t = jnp.ones((5, 2))
  g = scores.ggn_vp(apply, mse, params, v, x, t)["w"]
  hv = scores.hvp(ModelLoss(apply, mse), params, v, x, t)["w"]
  np.testing.assert_allclose(g, hv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, x.T @ x @ v["w"] / 5, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [None, 7])
def test_exact_diag_matches_dense_hessian(batch_size):
  params, (x, y) = _mlp_params(jax.random.key(3)), _data()
  flat, unravel, hess = _dense_hessian(MODEL, params, x, y)
  diag = jax.jit(lambda p: scores.hessian_diag(MODEL, p, x, y, method="exact",
                                               batch_size=batch_size))(params)
  assert diag["step"] is None
  np.testing.assert_allclose(_tree_flat(diag), jnp.diag(hess), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("batch_size", [4])
def test_fisher_diag_matches_explicit_ggn_and_class_expectation(batch_size):
  params, (x, y) = _mlp_params(jax.random.key(4)), _data()
  flat, _, ggn = _dense_ggn(params, x, y)
  diag = _tree_flat(jax.jit(lambda p: scores.hessian_diag(MODEL, p, x, y, method="fisher",
                                                           batch_size=batch_size))(params))
  np.testing.assert_allclose(diag, jnp.diag(ggn), rtol=2e-5, atol=1e-6)
  # Python loop: E_{c ~ p(.|x_n)} (d log p_c / d theta)^2, averaged over examples.
  _, _, merge = _flat(params)
  grad_logp = jax.jit(jax.grad(lambda f, xn, c: jax.nn.log_softmax(_apply(merge(f), xn))[0, c]))
  ref = np.zeros(flat.shape)
  for n in range(N):
    probs = jax.nn.softmax(_apply(params, x[n:n + 1]))[0]
    for c in range(D_OUT):
      ref += float(probs[c]) * np.asarray(grad_logp(flat, x[n:n + 1], c)) ** 2
  np.testing.assert_allclose(diag, ref / N, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_empirical_fisher_matches_python_loop(batch_size):
  params, (x, y) = _mlp_params(jax.random.key(5)), _data()
  flat, _, merge = _flat(params)
  grad_n = jax.jit(jax.grad(lambda f, xn, yn: MODEL(merge(f), xn, yn)))
  ref = np.zeros(flat.shape)
  for n in range(N):  # a plain loss_fn, not a ModelLoss
    ref += np.asarray(grad_n(flat, x[n:n + 1], y[n:n + 1])) ** 2
  loss = lambda p, x, y: _xent(_apply(p, x), y)
  diag = jax.jit(lambda p: scores.hessian_diag(loss, p, x, y, method="empirical_fisher",
                                               batch_size=batch_size))(params)
  np.testing.assert_allclose(_tree_flat(diag), ref / N, rtol=2e-5, atol=1e-7)


def _quadratic(p, c):
  return 0.5 * jnp.sum(c[0] * p["w"] ** 2) + jnp.sum(c[1] * p["b"] ** 2) + jnp.sum(p["w"])


_DIAG_QUADRATIC = jax.jit(lambda p, c, k: scores.hessian_diag(_quadratic, p, c, key=k, probes=1))


@settings(max_examples=20, deadline=None)
@given(coeffs=st.lists(st.floats(-5.0, 5.0, width=32), min_size=10, max_size=10),
       seed=st.integers(0, 2**31 - 1))
def test_hutchinson_exact_on_diagonal_quadratic_with_one_probe(coeffs, seed):
  c = (jnp.asarray(coeffs[:6], jnp.float32).reshape(2, 3), jnp.asarray(coeffs[6:]))
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(4)}
  diag = _DIAG_QUADRATIC(params, c, jax.random.key(seed))
  np.testing.assert_allclose(diag["w"], c[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(diag["b"], 2 * c[1], rtol=1e-6, atol=1e-6)


def _relative_error(estimate, exact):
  return float(jnp.linalg.norm(estimate - exact) / jnp.linalg.norm(exact))


@pytest.mark.parametrize("method,exact_method", [("hutchinson", "exact"), ("ggn", "fisher")])
def test_stochastic_error_falls_like_inverse_sqrt_probes(method, exact_method):
  params, (x, y) = _mlp_params(jax.random.key(6)), _data()
  exact = _tree_flat(jax.jit(lambda p: scores.hessian_diag(MODEL, p, x, y,
                                                            method=exact_method))(params))
  errors = {}
  keys = jax.random.split(jax.random.key(0), 3)
  for probes in (8, 128):
    estimate = jax.jit(jax.vmap(lambda k: _tree_flat(scores.hessian_diag(
        MODEL, params, x, y, key=k, probes=probes, method=method, batch_size=probes))))(keys)
    errors[probes] = np.mean([_relative_error(e, exact) for e in estimate])
  assert errors[128] < errors[8] / 2, errors  # 1/sqrt(probes) predicts a factor of 4


def test_rademacher_probes_are_signs_and_independent():
  like = [jnp.zeros((50, 40)), jnp.zeros((3,), jnp.bfloat16)]
  probes = jax.jit(rademacher(jax.random.key(0), like))(jnp.arange(40, 110))  # 70, 3 groups
  for v, x in zip(probes, like):
    assert v.dtype == x.dtype and v.shape == (70,) + x.shape
    assert set(np.unique(np.asarray(v, np.float32))) == {-1.0, 1.0}
  flat = np.concatenate([np.asarray(v, np.float32).reshape(70, -1) for v in probes], 1)
  assert abs(flat.mean()) < 0.02
  across_entries = flat.T @ flat / 70  # E[v vᵀ] = I
  off = np.abs(across_entries[~np.eye(len(across_entries), dtype=bool)])
  assert off.mean() < 0.15 and off.max() < 0.7  # ~ 1/sqrt(70) ≈ 0.12
  across_probes = flat @ flat.T / flat.shape[1]  # different probes are uncorrelated
  assert np.abs(across_probes[~np.eye(70, dtype=bool)]).max() < 0.12  # ~ 1/sqrt(2003)
  again = jax.jit(rademacher(jax.random.key(0), like))(jnp.arange(60, 61))
  np.testing.assert_array_equal(again[0][0], probes[0][20])  # probe i depends on i only


def test_batch_size_changes_memory_not_results():
  params, (x, y) = _mlp_params(jax.random.key(12)), _data()
  key = jax.random.key(4)
  run = jax.jit(lambda p, b: scores.hessian_diag(MODEL, p, x, y, key=key, probes=13,
                                                 batch_size=b), static_argnums=1)
  ref = _tree_flat(run(params, 1))
  for b in (5, 13):  # chunks of 5 with a remainder of 3; one chunk of all probes
    np.testing.assert_allclose(_tree_flat(run(params, b)), ref, rtol=1e-5, atol=1e-6)


def test_jit_matches_eager():
  params = {"w": jnp.array([[0.5, -1.0], [2.0, 0.3]]), "b": jnp.array([0.1, -0.2])}
  x, t = jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.3, 0.3]]), jnp.array([0, 1, 1])
  model = ModelLoss(lambda p, x: jnp.tanh(x @ p["w"] + p["b"]), _xent)
  key = jax.random.key(3)
  f = lambda p, k: scores.hessian_diag(model, p, x, t, key=k, probes=8, method="ggn")
  np.testing.assert_allclose(_tree_flat(jax.jit(f)(params, key)), _tree_flat(f(params, key)),
                             rtol=1e-5, atol=1e-7)
  f = lambda p: scores.hvp(model, p, p, x, t)
  np.testing.assert_allclose(_tree_flat(jax.jit(f)(params)), _tree_flat(f(params)), rtol=1e-5,
                             atol=1e-6)


def test_sharded_params(mesh):
  k1, k2 = jax.random.split(jax.random.key(8))
  params = {"w1": jax.random.normal(k1, (8, 16)), "w2": jax.random.normal(k2, (16, 8))}
  apply = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
  model = ModelLoss(apply, lambda o, t: jnp.mean((o - t) ** 2))
  x = jax.random.normal(jax.random.key(9), (16, 8))
  t = jnp.zeros((16, 8))
  sharded = {"w1": jax.device_put(params["w1"], NamedSharding(mesh, P(None, "x"))),
             "w2": jax.device_put(params["w2"], NamedSharding(mesh, P("x", None)))}
  key = jax.random.key(0)
  f = jax.jit(lambda p: scores.hessian_diag(model, p, x, t, key=key, probes=8))
  ref, out = f(params), f(sharded)
  for name in params:
    np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-6)
  hv = jax.jit(lambda p: scores.hvp(model, p, p, x, t))(sharded)
  np.testing.assert_allclose(hv["w2"], scores.hvp(model, params, params, x, t)["w2"],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(dtype):
  params, (x, y) = _mlp_params(jax.random.key(10)), _data()
  low = jax.tree.map(lambda a: a.astype(dtype) if isinstance(a, jax.Array) else a, params)
  fisher = jax.jit(lambda p: scores.hessian_diag(MODEL, p, x, y, method="fisher"))
  ref, diag = _tree_flat(fisher(params)), fisher(low)
  assert diag["layers"][0]["w"].dtype == jnp.float32
  np.testing.assert_allclose(_tree_flat(diag), ref, rtol=0.1, atol=0.02)
  hv = jax.jit(lambda p: scores.hvp(MODEL, p, p, x, y))(low)
  assert hv["layers"][0]["w"].dtype == dtype
  est = jax.jit(lambda p: scores.hessian_diag(MODEL, p, x, y, key=jax.random.key(0),
                                              probes=4))(low)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(est))


def test_bad_inputs_give_clear_errors():
  params, (x, y) = _mlp_params(jax.random.key(11)), _data()
  key = jax.random.key(0)
  vector_loss = lambda p, x, y: _apply(p, x).sum(-1)
  with pytest.raises(ValueError, match=r"loss_fn must return a floating scalar.*shape=\(6,\)"):
    scores.hessian_diag(vector_loss, params, x, y, key=key)
  with pytest.raises(ValueError, match="scalar"):
    scores.hvp(lambda p: (MODEL(p, x, y), 0.0), params, params)
  with pytest.raises(ValueError, match="probes must be >= 1"):
    scores.hessian_diag(MODEL, params, x, y, key=key, probes=0)
  with pytest.raises(TypeError, match="probes must be a Python int"):
    scores.hessian_diag(MODEL, params, x, y, key=key, probes=2.5)
  with pytest.raises(ValueError, match="needs key="):
    scores.hessian_diag(MODEL, params, x, y)
  with pytest.raises(ValueError, match="method must be one of"):
    scores.hessian_diag(MODEL, params, x, y, key=key, method="diag")
  with pytest.raises(TypeError, match="ModelLoss"):
    scores.hessian_diag(lambda p, x, y: MODEL(p, x, y), params, x, y, key=key, method="ggn")
  bad_vector = jax.tree.map(jnp.ones_like, params)
  bad_vector["layers"][0]["w"] = jnp.ones((2, 2))
  with pytest.raises(ValueError, match="'layers/0/w' has shape"):
    scores.hvp(MODEL, params, bad_vector, x, y)
  with pytest.raises(ValueError, match="same tree structure"):
    scores.hvp(MODEL, params, {"layers": []}, x, y)
  with pytest.raises(ValueError, match="leading example axis"):
    scores.hessian_diag(MODEL, params, x, y[:3], method="empirical_fisher")
  with pytest.raises(ValueError, match="no floating array leaf"):
    scores.hvp(lambda p: 0.0, {"n": 3}, {"n": 3})


_CHUNK_TAIL_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import common, jax, jax.numpy as jnp, jaxprune
data = common.load_dataset("mnist1d")
model = common.make_model("cnn", data)
loss = common.make_loss(model)
x, y = jnp.asarray(data.x_train[-500:]), jnp.asarray(data.y_train[-500:])
f = jax.jit(lambda p: jaxprune.scores.obd(loss, p, x, y, method="fisher", batch_size=256))
for i in range(4):
  jax.block_until_ready(f(common.init_params(model, data, jax.random.key(i))))
print("done")
"""


def test_fisher_diagonal_with_a_tail_chunk_does_not_hang():
  # 500 examples in chunks of 256: one full chunk plus a tail of 244. Run side by side, the two
  # vmapped chunks (each with a batched eigh) deadlocked XLA:CPU by the third call.
  examples = pathlib.Path(__file__).resolve().parents[2] / "examples"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  try:
    proc = subprocess.run([sys.executable, "-c", _CHUNK_TAIL_SCRIPT, str(examples)], env=env,
                          capture_output=True, text=True, timeout=120)
  except subprocess.TimeoutExpired:
    pytest.fail("obd(method='fisher') with a tail chunk hung (XLA:CPU deadlock)")
  assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]
