"""apply_masks: exact zeros, untouched unmasked leaves, errors naming the path."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune


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
