"""Bad input to the mask functions raises clear errors naming the leaf path."""

import jax.numpy as jnp
import pytest

from jaxprune import masks

SCORES = {"enc": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan")])
def test_sparsity_outside_unit_interval(sparsity):
  with pytest.raises(ValueError, match=r"'enc/kernel' must be in \[0, 1\]"):
    masks.topk(SCORES, sparsity)


def test_sparsity_pytree_with_bad_value_names_path():
  with pytest.raises(ValueError, match="'enc/kernel'"):
    masks.topk(SCORES, {"enc": {"kernel": 2.0, "bias": None}})


def test_sparsity_pytree_with_wrong_structure():
  with pytest.raises(ValueError, match="same tree structure"):
    masks.topk(SCORES, {"encoder": 0.5})


def test_integer_scores_are_rejected():
  with pytest.raises(TypeError, match="'w' have dtype int32.*floating"):
    masks.topk({"w": jnp.ones((2, 2), jnp.int32)}, 0.5)


def test_previous_with_wrong_shape():
  with pytest.raises(ValueError, match="previous mask at 'enc/kernel' has shape"):
    masks.topk(SCORES, 0.5, previous={"enc": {"kernel": jnp.ones((2, 2), bool), "bias": None}})


def test_global_takes_one_sparsity_and_known_normalizer():
  with pytest.raises(TypeError, match="one sparsity"):
    masks.global_topk(SCORES, {"enc": {"kernel": 0.5, "bias": None}})
  with pytest.raises(ValueError, match="normalize must be"):
    masks.global_topk(SCORES, 0.5, normalize="l3")


def test_bool_sparsity_rejected():
  with pytest.raises(TypeError, match="bool"):
    masks.topk(SCORES, True)
