"""Pins each XLA trick of jaxprune.masks._xla on compiled HLO or memory_analysis()."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxprune
from jaxprune.masks import _search, _xla


def test_after_big_is_a_conditional_and_small_an_optimization_barrier():
  x = jnp.ones((8, 8))
  token = jnp.zeros((), jnp.int32)
  big = jax.jit(lambda t, x: _xla.after(t, jnp.sum, x, big=True)).lower(token, x).compile()
  small = jax.jit(lambda t, x: _xla.after(t, jnp.sum, x, big=False)).lower(token, x).as_text()
  assert "conditional" in big.as_text()  # not folded away: the predicate is not provable
  assert "optimization_barrier" in small


def test_after_shares_one_temporary_buffer_between_leaves():
  """Three big leaves counted in sequence need the temporaries of about one leaf, not three."""
  leaves = [jax.ShapeDtypeStruct((1024, 1024), jnp.float32) for _ in range(3)]
  fn = jax.jit(lambda xs: _search.top_k(xs, [None] * 3, 1000))
  temp = fn.lower(leaves).compile().memory_analysis().temp_size_in_bytes
  one_leaf = 4 * 1024 * 1024
  assert temp <= 1.6 * one_leaf, temp / one_leaf


def test_fused_scores_memory_stays_bounded():
  """global_topk(magnitude(params)) in one jit: temporaries are one copy of the scores (the
  search loop reads them many times) plus about one leaf; pins this against regressions.

  The issue-18 target (<= 0.35x params) is not reached on XLA:CPU: see the module docstring.
  """
  params = {k: jax.ShapeDtypeStruct((1024, 1024), jnp.float32) for k in "abc"}
  fn = jax.jit(lambda p: jaxprune.masks.global_topk(jaxprune.scores.magnitude(p), 0.9))
  temp = fn.lower(params).compile().memory_analysis().temp_size_in_bytes
  n_bytes = 3 * 4 * 1024 * 1024
  assert temp <= 1.5 * n_bytes, temp / n_bytes


def test_packed_row_counts_is_one_reduction_and_exact():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(64, _xla.PACK_ROW)), jnp.float32)
  fn = jax.jit(lambda x: _xla.packed_row_counts(x >= -0.5, x >= 0.5))
  hlo = fn.lower(x).compile().as_text()
  reductions = [line for line in hlo.splitlines()
                if " reduce(" in line and "[64]" in line.split("=", 1)[1][:20]]
  assert len(reductions) == 1, reductions
  a, b = fn(x)
  np.testing.assert_array_equal(np.asarray(a), np.sum(np.asarray(x) >= -0.5, axis=-1))
  np.testing.assert_array_equal(np.asarray(b), np.sum(np.asarray(x) >= 0.5, axis=-1))


def test_anchored_gives_the_mask_the_layout_of_its_anchor(mesh):
  like = jax.device_put(jnp.ones((64, 32)), NamedSharding(mesh, P(None, "x")))
  vector = jnp.arange(32) % 2 == 0
  plain = jax.jit(lambda v, l: jnp.broadcast_to(v, l.shape))(vector, like)
  anchored = jax.jit(lambda v, l: _xla.anchored(jnp.broadcast_to(v, l.shape), l))(vector, like)
  assert anchored.sharding.is_equivalent_to(like.sharding, 2)
  assert not plain.sharding.is_equivalent_to(like.sharding, 2)  # what the trick is for
  np.testing.assert_array_equal(np.asarray(anchored), np.asarray(plain))
