"""SynFlow scores (conserved flow) and iterative synflow masks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from jaxprune import masks, scores, transforms


def _relu_net(p, x):
  h = jax.nn.relu(x @ p[0])
  h = jax.nn.relu(h @ p[1])
  return h @ p[2]


@functools.cache
def _synflow_jit(width):
  return jax.jit(lambda p: scores.synflow(_relu_net, p, (1, width)))


@settings(max_examples=8, deadline=None)
@given(widths=st.lists(st.sampled_from([1, 3, 6]), min_size=4, max_size=4),
       seed=st.integers(0, 1000))
def test_synflow_conserves_flow_per_layer(widths, seed):
  keys = jax.random.split(jax.random.key(seed), 3)
  params = [jax.random.normal(k, (a, b)) for k, a, b in zip(keys, widths[:-1], widths[1:])]
  got = _synflow_jit(widths[0])(params)
  # With |θ| and a ones input, R = 1ᵀ|W0||W1||W2|1 and every layer carries all of R.
  a = [jnp.abs(w) for w in params]
  total = jnp.ones(widths[0]) @ a[0] @ a[1] @ a[2] @ jnp.ones(widths[-1])
  for s in got:
    assert bool(jnp.all(s >= 0))
    np.testing.assert_allclose(jnp.sum(s), total, rtol=1e-5)
  # Entry (i, j) of the middle layer: paths through it, times |w_ij|.
  before = jnp.ones(widths[0]) @ a[0]
  after = a[2] @ jnp.ones(widths[-1])
  np.testing.assert_allclose(got[1], before[:, None] * a[1] * after[None, :], rtol=1e-5)


def test_synflow_masks_exact_count_and_iteration():
  keys = jax.random.split(jax.random.key(4), 3)
  params = {"l": [jax.random.normal(k, s) for k, s in zip(keys, [(6, 8), (8, 8), (8, 2)])],
            "bias": jnp.ones(2)}
  apply = lambda p, x: _relu_net(p["l"], x) + p["bias"]
  m = jax.jit(lambda p: transforms.synflow_masks(apply, p, (1, 6), 0.8, iterations=20))(params)
  assert m["bias"] is None
  assert sum(int(v.sum()) for v in m["l"]) == 128 - round(0.8 * 128)
  one, ref = jax.jit(lambda p: (transforms.synflow_masks(apply, p, (1, 6), 0.8, iterations=1),
                                masks.global_topk(scores.synflow(apply, p, (1, 6)), 0.8)))(params)
  for a, b in zip(one["l"], ref["l"]):
    np.testing.assert_array_equal(a, b)
  # Masked params score 0: the next round never revives pruned entries.
  again = scores.synflow(apply, params, (1, 6), masks=m)
  for s, k in zip(again["l"], m["l"]):
    assert bool(jnp.all(jnp.where(k, True, s == 0)))
