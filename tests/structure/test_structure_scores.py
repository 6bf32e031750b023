"""Group scores and channel selection against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import structure

import structure_models as sm


@pytest.fixture(scope="module")
def mlp():
  p = sm.mlp_params()
  x = sm.normal(7, 6, 3)
  g = structure.trace(sm.mlp, p, x)
  return p, x, g, g.find("w1", 1)[0].index


def _np(p):
  return {k: np.asarray(v, np.float64) for k, v in p.items()}


def test_norm_scores_match_numpy(mlp):
  p, _, g, i = mlp
  q = _np(p)
  l1 = np.abs(q["w1"]).sum(0) + np.abs(q["b1"]) + np.abs(q["w2"]).sum(1)
  l2 = np.sqrt((q["w1"] ** 2).sum(0) + q["b1"] ** 2 + (q["w2"] ** 2).sum(1))
  np.testing.assert_allclose(structure.group_scores(g, p, "l1")[i], l1, rtol=1e-5)
  np.testing.assert_allclose(structure.group_scores(g, p, "l2")[i], l2, rtol=1e-5)
  jitted = jax.jit(lambda p: structure.group_scores(g, p, "l2")[i])(p)
  np.testing.assert_allclose(jitted, l2, rtol=1e-5)


def test_taylor_and_element_scores(mlp):
  p, x, g, i = mlp
  loss = lambda p, x: jnp.sum(sm.mlp(p, x) ** 2)  # noqa: E731
  grads = jax.grad(loss)(p, x)
  q, gq = _np(p), _np(grads)
  taylor = np.abs((q["w1"] * gq["w1"]).sum(0) + q["b1"] * gq["b1"] + (q["w2"] * gq["w2"]).sum(1))
  np.testing.assert_allclose(structure.group_scores(g, p, "taylor", grads=grads)[i], taylor,
                             rtol=1e-4)
  # second order: the OBD diagonal summed per group, from the public jaxprune.scores
  obd = jaxprune.scores.obd(loss, p, x, key=jax.random.key(0), probes=4)
  o = _np(obd)
  expected = o["w1"].sum(0) + o["b1"] + o["w2"].sum(1)
  np.testing.assert_allclose(structure.group_scores(g, p, obd)[i], expected, rtol=1e-4)
  partial = {"w1": obd["w1"], "b1": None, "w2": None, "b2": None}  # None leaves are skipped
  np.testing.assert_allclose(structure.group_scores(g, p, partial)[i], o["w1"].sum(0),
                             rtol=1e-4)


def test_scale_random_callable():
  x = sm.normal(3, 2, 10, 3)
  m = sm.ResCNN()
  v = sm.init(m, x)
  g = structure.trace(m.apply, v, x)
  grp = g.find("params/block0/Conv_0/kernel", 2)[0]
  gamma = np.abs(np.asarray(v["params"]["block0"]["BatchNorm_0"]["scale"]))
  np.testing.assert_allclose(structure.group_scores(g, v, "scale", groups=[grp.index])[grp.index], gamma, rtol=1e-6)
  r1 = structure.group_scores(g, v, "random", key=jax.random.key(1))[grp.index]
  r2 = structure.group_scores(g, v, "random", key=jax.random.key(1))[grp.index]
  np.testing.assert_array_equal(r1, r2)
  out = structure.group_scores(g, v, lambda group, params: jnp.arange(group.size) * 1.0)
  np.testing.assert_array_equal(out[grp.index], np.arange(8))
  with pytest.raises(ValueError, match="key="):
    structure.group_scores(g, v, "random")
  with pytest.raises(ValueError, match="return shape"):
    structure.group_scores(g, v, lambda group, params: jnp.ones(3))


def test_select_counts_round_to_min_keep_global(mlp):
  p, _, g, i = mlp
  scores = {i: np.array([5., 1., 7., 3., 2., 8., 0., 4.])}
  np.testing.assert_array_equal(structure.select(g, p, 0.5, scores=scores)[i], [0, 2, 5, 7])
  np.testing.assert_array_equal(structure.select(g, p, 0.6, scores=scores)[i], [0, 2, 5])
  np.testing.assert_array_equal(structure.select(g, p, 0.6, scores=scores, round_to=2)[i],
                                [0, 2, 5, 7])
  np.testing.assert_array_equal(structure.select(g, p, 1.0, scores=scores, min_keep=2)[i], [2, 5])
  assert len(structure.select(g, p, 0.5, ranking="global")[i]) == 4  # one group: same count


def test_global_ranking_across_groups():
  p = sm.concat_params()
  g = structure.trace(sm.concat, p, jnp.ones((1, 3)))
  ia, ib = g.find("a", 1)[0].index, g.find("b", 1)[0].index
  scores = {ia: np.array([1., 1., 1., 1., 1., 1.]), ib: np.array([0.1, 0.1, 3., 3.])}
  keep = structure.select(g, p, 0.2, scores=scores, ranking="global")  # removes 2 of 10
  assert len(keep[ia]) == 6 and keep[ib].tolist() == [2, 3]


def test_scale_without_norm_raises(mlp):
  p, _, g, _ = mlp
  with pytest.raises(ValueError, match="no norm scale.*sparsity=\\{group"):
    structure.group_scores(g, p, "scale")
  with pytest.raises(ValueError, match="grads="):
    structure.group_scores(g, p, "taylor")
  with pytest.raises(ValueError, match="method must be one of"):
    structure.group_scores(g, p, "l3")
