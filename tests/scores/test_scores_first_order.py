"""First-order scores (magnitude, gradient, saliency) against hand-computed values."""

import jax
import jax.numpy as jnp
import pytest

import jaxprune


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
