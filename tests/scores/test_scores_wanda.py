"""Wanda scores and input_norms (jit, casts, transposed and reshaped kernels)."""

import jax
import jax.numpy as jnp
import numpy as np

from score_models import apply_small_mlp, small_mlp

from jaxprune import scores


def test_wanda_and_input_norms():
  params = small_mlp(jax.random.key(5))
  x = jax.random.normal(jax.random.key(6), (2, 7, 4))  # batch and tokens
  norms = scores.input_norms(lambda p, x: apply_small_mlp(p, x), params, x)
  h = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"])
  np.testing.assert_allclose(norms["l1"]["kernel"][:, 0], jnp.sqrt((x**2).sum((0, 1))),
                             rtol=1e-5)
  np.testing.assert_allclose(norms["l2"]["kernel"][:, 0], jnp.sqrt((h**2).sum((0, 1))),
                             rtol=1e-5)
  assert norms["l1"]["kernel"].shape == (4, 1) and norms["l1"]["bias"] is None
  got = scores.wanda(params, norms)
  np.testing.assert_allclose(got["l2"]["kernel"],
                             jnp.abs(params["l2"]["kernel"]) * norms["l2"]["kernel"], rtol=1e-6)
  one_d = scores.wanda(params, {"l1": {"kernel": norms["l1"]["kernel"][:, 0], "bias": None},
                                "l2": {"kernel": None}})
  np.testing.assert_allclose(one_d["l1"]["kernel"], got["l1"]["kernel"], rtol=1e-6)
  assert one_d["l2"]["kernel"] is None


def test_input_norms_through_jit_casts_and_transposed_kernels():
  k1, k2 = jax.random.split(jax.random.key(7))
  params = {"torch_style": jax.random.normal(k1, (5, 4), jnp.bfloat16),  # (out, in): x @ W.T
            "conv": jax.random.normal(k2, (3, 1, 5))}  # OIW

  def fn(p, x):
    h = jax.jit(lambda x, w: jax.nn.relu(x @ w.astype(jnp.float32).T))(x, p["torch_style"])
    return jax.lax.conv_general_dilated(h[:, None, :], p["conv"], (1,), "SAME")

  x = jax.random.normal(jax.random.key(8), (6, 4))
  norms = jax.jit(lambda p, x: scores.input_norms(fn, p, x))(params, x)
  assert norms["torch_style"].shape == (1, 4) and norms["conv"] is None
  np.testing.assert_allclose(norms["torch_style"][0], jnp.sqrt((x**2).sum(0)), rtol=1e-5)


def test_input_norms_of_reshaped_kernels_im2col_and_refused_splits():
  k1, k2, k3 = jax.random.split(jax.random.key(11), 3)
  params = {"conv": jax.random.normal(k1, (3, 2, 4)),  # (window, in, out) as an im2col matmul
            "heads": jax.random.normal(k2, (4, 2, 3)),  # (in, heads, head_dim) merged after
            "split": jax.random.normal(k3, (6, 2))}  # (in, out) with its input axis split

  def fn(p, x):  # x: (batch, length, in=2)
    patches = jnp.concatenate([x[:, i:i + 4] for i in range(3)], axis=-1)  # (b, 4, 3*2)
    h = patches @ p["conv"].reshape(6, 4)
    h = h @ p["heads"].reshape(4, 6)
    h = h.reshape(*h.shape[:2], 3, 2)
    return jnp.einsum("btij,ijo->bto", h, p["split"].reshape(3, 2, 2))

  x = jax.random.normal(jax.random.key(12), (5, 6, 2))
  norms = jax.jit(lambda p, x: scores.input_norms(fn, p, x))(params, x)
  patches = jnp.concatenate([x[:, i:i + 4] for i in range(3)], axis=-1)
  want = jnp.sqrt((patches**2).sum((0, 1))).reshape(3, 2, 1)  # (window, in) row-major
  assert norms["conv"].shape == (3, 2, 1)
  np.testing.assert_allclose(norms["conv"], want, rtol=1e-5)
  h = patches @ params["conv"].reshape(6, 4)
  assert norms["heads"].shape == (4, 1, 1)
  np.testing.assert_allclose(norms["heads"][:, 0, 0], jnp.sqrt((h**2).sum((0, 1))), rtol=1e-5)
  assert norms["split"] is None  # a split input axis is not followed (no norms, no guess)
  w = scores.wanda(params, norms)
  np.testing.assert_allclose(w["conv"], jnp.abs(params["conv"]) * want, rtol=1e-5)
