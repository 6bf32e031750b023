"""apply_masks, summary and first-order scores (allocation: tests/allocate)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune
from jaxprune import summary


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
