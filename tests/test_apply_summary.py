"""apply_masks, summary, allocation and first-order scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import allocate, summary


def test_apply_masks_exact_zeros_even_for_inf_and_nan():
  w = jnp.array([[jnp.inf, jnp.nan], [-jnp.inf, 2.0]], jnp.bfloat16)
  out = jaxprune.apply_masks({"w": w}, {"w": jnp.array([[False, False], [False, True]])})["w"]
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out, np.float32), [[0, 0], [0, 2]])
  assert not np.signbit(np.asarray(out, np.float32)).any()


def test_apply_masks_leaves_unmasked_leaves_untouched():
  params = {"w": jnp.ones((2, 2)), "b": jnp.arange(2.0), "step": 3}
  out = jaxprune.apply_masks(params, {"w": jnp.zeros((2, 2), bool), "b": None, "step": None})
  assert out["b"] is params["b"] and out["step"] == 3 and float(out["w"].sum()) == 0


def test_apply_masks_errors_name_the_path():
  with pytest.raises(ValueError, match="'enc/kernel'.*shape \\(2, 3\\)"):
    jaxprune.apply_masks({"enc": {"kernel": jnp.ones((3, 2))}},
                         {"enc": {"kernel": jnp.ones((2, 3), bool)}})
  with pytest.raises(ValueError, match="same tree structure"):
    jaxprune.apply_masks({"a": jnp.ones(2)}, {"b": None})


def test_summary_sparsity_and_table():
  tree = {"a": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.zeros((2, 3)), "c": jnp.zeros(5)}
  values = jax.jit(summary.sparsity)(tree)
  assert {k: float(v) for k, v in values.items()} == pytest.approx({"a": 0.75, "b": 1.0, "total": 0.9})
  text = summary.table(tree)
  assert "a" in text and "90.00%" in text.splitlines()[-1]
  assert summary.scalars(tree, prefix="s/")["s/total"] == pytest.approx(0.9)


def test_summary_of_masks_counts_false_entries():
  m = jaxprune.masks.topk({"w": jnp.arange(10.0)}, 0.3, where=lambda p, x: True)
  assert float(summary.sparsity(m)["w"]) == pytest.approx(0.3)


def test_summary_plot_writes_png(tmp_path):
  fig = summary.plot({"w": jnp.zeros((2, 2))}, path=tmp_path / "s.png")
  assert (tmp_path / "s.png").stat().st_size > 0
  assert fig is not None


def test_erk_matches_total_and_makes_small_layers_dense():
  params = {"tiny": np.zeros((2, 2)), "mid": np.zeros((32, 32)), "big": np.zeros((256, 256))}
  alloc = allocate.erk(params, 0.95)
  assert alloc["tiny"] == 0.0
  assert alloc["big"] > alloc["mid"] > 0
  kept = sum((1 - alloc[k]) * params[k].size for k in params)
  total = sum(x.size for x in params.values())
  assert kept / total == pytest.approx(0.05, rel=1e-9)


def test_erk_reference_formula():
  params = {"a": np.zeros((10, 20)), "b": np.zeros((3, 3, 4, 8))}
  alloc = allocate.erk(params, 0.8)
  ratio = {k: sum(v.shape) / v.size for k, v in params.items()}
  eps = 0.2 * sum(v.size for v in params.values()) / sum(ratio[k] * params[k].size for k in params)
  for k in params:
    assert 1 - alloc[k] == pytest.approx(eps * ratio[k])


def test_custom_and_uniform():
  params = {"embed": np.zeros((8, 4)), "dense": np.zeros((4, 4)), "bias": np.zeros(4)}
  assert allocate.uniform(params, 0.5) == {"embed": 0.5, "dense": 0.5, "bias": None}
  got = allocate.custom(params, {"emb": 0.2, ".*": 0.7})
  assert got == {"embed": 0.2, "dense": 0.7, "bias": None}
  with pytest.raises(ValueError, match="matched no selected leaf"):
    allocate.custom(params, {"decoder": 0.5})
  with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
    allocate.uniform(params, 1.5)


def test_first_order_scores_against_hand_values():
  params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([3.0])}
  grads = {"w": jnp.array([[-4.0, 0.5]]), "b": jnp.array([1.0])}
  assert jaxprune.scores.magnitude(params)["w"].tolist() == [[1.0, 2.0]]
  assert jaxprune.scores.gradient(params, grads)["w"].tolist() == [[4.0, 0.5]]
  assert jaxprune.scores.saliency(params, grads)["w"].tolist() == [[4.0, 1.0]]
  r1 = jaxprune.scores.random(params, jax.random.key(0))
  r2 = jaxprune.scores.random(params, jax.random.key(0))
  assert r1["w"].shape == (1, 2) and bool(jnp.all(r1["w"] == r2["w"]))


def test_saliency_grads_mismatch_names_path():
  with pytest.raises(ValueError, match="grads at 'w'"):
    jaxprune.scores.saliency({"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 3))})
