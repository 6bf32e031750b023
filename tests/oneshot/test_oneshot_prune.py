"""Whole-model one-shot pruning: sequential propagation, layer discovery, OWL, errors."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import oneshot


def _two_layer():
  k = jax.random.split(jax.random.key(0), 3)
  params = {"a": jax.random.normal(k[0], (8, 16)), "b": jax.random.normal(k[1], (16, 4)) / 4}
  x = jax.random.normal(k[2], (3, 32, 8)) @ jnp.diag(jnp.linspace(0.2, 3.0, 8))
  return params, (lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"]), [x[i] for i in range(3)]


@pytest.mark.parametrize("keep", [True, False])
def test_second_layer_sees_pruned_first_layer(keep):
  params, f, data = _two_layer()
  new, masks = oneshot.prune(f, params, data, method="sparsegpt", sparsity=0.5, block=8,
                             keep_activations=keep)
  a_ref, _ = oneshot.sparsegpt(params["a"], _hessian(np.concatenate(data)), 0.5, block=8)
  np.testing.assert_allclose(np.asarray(new["a"]), np.asarray(a_ref), atol=1e-5)
  h_pruned = np.tanh(np.concatenate(data) @ np.asarray(new["a"]))  # numpy, from pruned a
  b_ref, m_ref = oneshot.sparsegpt(params["b"], _hessian(h_pruned), 0.5, block=8)
  np.testing.assert_allclose(np.asarray(new["b"]), np.asarray(b_ref), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(masks["b"]), np.asarray(m_ref))
  h_dense = np.tanh(np.concatenate(data) @ np.asarray(params["a"]))
  b_dense, _ = oneshot.sparsegpt(params["b"], _hessian(h_dense), 0.5, block=8)
  assert np.abs(np.asarray(b_dense) - np.asarray(b_ref)).max() > 1e-3  # the test can fail


def _hessian(x):
  x = np.asarray(x, np.float64)
  return (2 * x.T @ x / x.shape[0]).astype(np.float32)


def test_wanda_norms_from_pruned_inputs():
  params, f, data = _two_layer()
  new, _ = oneshot.prune(f, params, data, method="wanda", sparsity=0.5)
  h = np.tanh(np.concatenate(data) @ np.asarray(new["a"]))
  b_ref, _ = oneshot.wanda(params["b"], np.linalg.norm(h, axis=0), 0.5)
  np.testing.assert_array_equal(np.asarray(new["b"]), np.asarray(b_ref))


class _Stacked(nn.Module):
  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.initializers.normal(0.5), (3, 8, 8))
    x, _ = jax.lax.scan(lambda h, k: (jnp.tanh(h @ k), None), x, w)
    return nn.Dense(2, name="head")(x)


def test_scan_stacked_layers_match_unrolled():
  model = _Stacked()
  x = jax.random.normal(jax.random.key(1), (2, 16, 8))
  params = model.init(jax.random.key(0), x[0])["params"]
  apply = lambda p, x: model.apply({"params": p}, x)
  new, masks = oneshot.prune(apply, params, [x[0], x[1]], method="sparsegpt", sparsity=0.5,
                             block=4)

  def unrolled(p, x):
    for i in range(3):
      x = jnp.tanh(x @ p[f"w{i}"])
    return x @ p["head"]["kernel"] + p["head"]["bias"]
  flat = {f"w{i}": params["w"][i] for i in range(3)} | {"head": params["head"]}
  ref, ref_masks = oneshot.prune(unrolled, flat, [x[0], x[1]], method="sparsegpt",
                                 sparsity=0.5, block=4)
  for i in range(3):
    np.testing.assert_allclose(np.asarray(new["w"][i]), np.asarray(ref[f"w{i}"]), atol=1e-5)
    assert int(masks["w"][i].sum()) == 32
  np.testing.assert_allclose(np.asarray(new["head"]["kernel"]),
                             np.asarray(ref["head"]["kernel"]), atol=1e-5)


class _Attn(nn.Module):
  @nn.compact
  def __call__(self, x):
    q = nn.DenseGeneral((2, 4), name="q")(x)  # kernel (8, 2, 4): contracted axis 0
    k = nn.DenseGeneral((2, 4), name="k")(x)
    a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", a, q)
    return nn.DenseGeneral(8, axis=(-2, -1), name="o")(y)  # kernel (2, 4, 8): axes 0, 1


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_flax_general_kernels_masks_and_keep_sparse(method):
  model = _Attn()
  x = jax.random.normal(jax.random.key(3), (2, 4, 6, 8))
  params = model.init(jax.random.key(0), x[0])["params"]
  apply = lambda p, x: model.apply({"params": p}, x)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    new, masks = oneshot.prune(apply, params, [x[0], x[1]], method=method, n=2, m=4, block=4,
                               where="kernel")
  q = np.asarray(masks["q"]["kernel"]).reshape(2, 4, 8)  # inputs in groups of 4, per output
  assert (q.sum(axis=1) == 2).all()
  o = np.asarray(masks["o"]["kernel"]).reshape(2, 4, 8)  # (heads*head_dim) inputs
  assert (o.sum(axis=1) == 2).all()
  assert masks["q"]["bias"] is None
  np.testing.assert_array_equal(np.asarray(new["o"]["kernel"]),
                                np.asarray(jaxprune.apply_masks(new, masks)["o"]["kernel"]))
  tx = jaxprune.keep_sparse(masks)
  tx.init(new)


def test_unused_leaf_warns_and_stays_dense():
  params, f, data = _two_layer()
  params["table"] = jnp.ones((5, 8))
  g = lambda p, x: f(p, x + p["table"][0])
  with pytest.warns(UserWarning, match="table"):
    _, masks = oneshot.prune(g, params, data, method="magnitude", sparsity=0.5)
  assert masks["table"] is None


def test_owl_sparsities_spread_and_average():
  params, f, data = _two_layer()
  _, masks = oneshot.prune(f, params, data, method="wanda", sparsity=0.6,
                           owl=oneshot.OWL(lam=0.1, m=2.0))
  s_a = 1 - float(masks["a"].mean())
  s_b = 1 - float(masks["b"].mean())
  assert abs(s_a - s_b) > 0.05 and abs(abs(s_a - s_b) - 0.2) < 0.07  # 2λ, up to 1/16 rounding
  kept = float(masks["a"].sum() + masks["b"].sum())
  assert abs(kept / (8 * 16 + 16 * 4) - 0.4) < 0.04  # size-weighted average at the target


def test_owl_outlier_ratio_by_hand():
  from jaxprune.oneshot import _owl
  w = jnp.array([[1.0, 1.0], [1.0, 20.0]])
  # scores 1, 1, 1, 20: mean 5.75; above 2 x mean: one of four
  assert _owl.outlier_ratio(w, jnp.ones(2), 2.0) == 0.25


def test_owl_group_ratio_over_the_group_scores_by_hand():
  """A group's ratio counts its layers' scores against their common mean (the paper's block
  ratio), not the average of per-layer ratios: here the two orders differ."""
  from jaxprune.oneshot import _owl, _trace
  kernels = [jnp.full((2, 2), 10.0), jnp.array([[1.0, 1.0], [1.0, 20.0]]), jnp.ones((2, 2)),
             jnp.array([[1.0, 1.0], [1.0, 5.0]])]
  sites = [_trace.Site(i, (), (0,), 2, 2, None) for i in range(4)]
  names = ["g1/a", "g1/b", "g2/c", "g3/d"]
  opts = oneshot.OWL(lam=0.1, m=1.2, group=lambda name: name.split("/")[0])
  # g1: scores 10,10,10,10,1,1,1,20 (mean 7.875, 5 above 9.45) -> 0.625; g2: 0; g3: 1 of 4 -> 0.25
  # (per-layer ratios averaged would give g1 0.125 < g3 0.25)
  s = _owl.allocate(opts, sites, names, [jnp.ones(2)] * 4, kernels, [0.5] * 4)
  assert s[0] == s[1] < s[3] < s[2]
  kept = [(1 - x) * 4 for x in s]
  assert abs(sum(kept) / 16 - 0.5) < 1e-9  # size-weighted average kept fraction at the target
  assert abs((1 - s[0]) - (1 - s[2]) - 0.2) < 1e-9  # spread 2 lambda between the extremes


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.5), r"\[0, 1\]"),
    (dict(n=2, m=3), "does not divide"),
    (dict(method="obs"), "method must be one of"),
    (dict(n=2, m=4, owl=True), "N:M"),
    (dict(owl="yes"), "owl must be"),
])
def test_errors(kwargs, match):
  params, f, data = _two_layer()
  with pytest.raises((ValueError, TypeError), match=match):
    oneshot.prune(f, params, data, **kwargs)


def test_calibration_errors():
  params, f, data = _two_layer()
  with pytest.raises(ValueError, match="batch 1"):
    oneshot.prune(f, params, [data[0], jnp.ones((4, 5))], method="wanda")
  with pytest.raises(ValueError, match="empty"):
    oneshot.prune(f, params, [])
  with pytest.raises(TypeError, match="sequence of batches"):
    oneshot.prune(f, params, data[0])
  with pytest.raises(ValueError, match="no linear layer"):
    oneshot.prune(lambda p, x: jnp.sum(p["a"]) * x, params, data)
