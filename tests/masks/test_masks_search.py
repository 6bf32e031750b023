"""The counting search of jaxprune.masks._search on inputs where its sample bracket is wrong.

Arrays here are big enough (> 4096 entries) that the search samples them with strides > 1, so
the bracket from the sample, its verification and the fallbacks all run; results must equal a
sort-based reference exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxprune.masks import _search
from reference import check_top_k

top_k = jax.jit(lambda xs, es, k: _search.top_k(xs, es, k))  # k traced: one compile per shape


def check(leaves, eligible, k):
  check_top_k(top_k, leaves, eligible, k)


SHAPE = (128, 96)  # sampled with strides (2, 2)


def adversarial(kind, rng):
  x = np.abs(rng.normal(size=SHAPE)).astype(np.float32)
  off_grid = np.zeros(SHAPE, bool)
  off_grid[1::2] = True  # rows the strided sample never sees
  if kind == "all_equal":
    return np.full(SHAPE, 0.5, np.float32)
  if kind == "outliers":
    return np.where(rng.random(SHAPE) < 0.01, np.float32(3e38), x)
  if kind == "hidden_large":  # the sample sees only small values: bracket too low
    return np.where(off_grid, x + 100, x).astype(np.float32)
  if kind == "hidden_small":  # the sample sees only large values: bracket too high
    return np.where(off_grid, x, x + 100).astype(np.float32)
  if kind == "mostly_nan":
    return np.where(rng.random(SHAPE) < 0.97, np.nan, x).astype(np.float32)
  if kind == "hidden_nan":
    return np.where(off_grid, np.nan, x).astype(np.float32)
  if kind == "few_levels":
    return np.round(x * 2).astype(np.float32)
  if kind == "signed_inf":
    x = rng.normal(size=SHAPE).astype(np.float32)
    return np.where(rng.random(SHAPE) < 0.1, np.float32(np.inf) * np.sign(x), x)
  if kind == "zeros":
    return np.where(rng.random(SHAPE) < 0.5, np.float32(-0.0), np.float32(0.0))
  raise ValueError(kind)


KINDS = ["all_equal", "outliers", "hidden_large", "hidden_small", "mostly_nan", "hidden_nan",
         "few_levels", "signed_inf", "zeros"]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(KINDS), st.sampled_from(["all", "random", "mostly_not", "hidden"]),
       st.floats(0, 1.1, allow_subnormal=False), st.integers(0, 2**31 - 1))
def test_adversarial_leaf_matches_reference(kind, which, fraction, seed):
  rng = np.random.default_rng(seed)
  x = adversarial(kind, rng)
  eligible = {"all": None, "random": rng.random(SHAPE) < 0.7,
              "mostly_not": rng.random(SHAPE) < 0.03,
              "hidden": np.arange(SHAPE[0])[:, None] % 2 == np.ones(SHAPE, bool)}[which]
  check([x], [eligible], int(fraction * x.size))


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(KINDS), st.floats(0, 1, allow_subnormal=False), st.integers(0, 2**31 - 1))
def test_adversarial_global_matches_reference(kind, fraction, seed):
  rng = np.random.default_rng(seed)
  leaves = [adversarial(kind, rng), np.abs(rng.normal(size=(64, 80))).astype(np.float32),
            rng.integers(0, 3, size=(5000,)).astype(np.float32)]
  eligible = [None, rng.random((64, 80)) < 0.5, None]
  check(leaves, eligible, int(fraction * sum(x.size for x in leaves)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_sampled(dtype):
  x = np.asarray(jnp.asarray(np.random.default_rng(0).normal(size=SHAPE), dtype))
  for k in (0, 1, 1000, 6000, x.size):
    check([x], [None], k)


@pytest.mark.parametrize("row", [4095, 4096])
def test_count_two_is_exact_on_long_rows(row):
  x = jnp.ones((3, row))
  keys = [_search._key_of(v, np.float32) for v in (0.5, 2.0)]
  a, b = (jnp.asarray(k, jnp.uint32) for k in keys)
  rows = _search._count_pass([(x, None)], a, b, np.float32, jnp.int32)
  c_a, c_b = (int(jnp.sum(r[0])) for r in rows)
  assert (c_a, c_b) == (3 * row, 0)
  rows = _search._count_pass([(x, None)], a, a, np.float32, jnp.int32)
  c_a, c_b = (int(jnp.sum(r[0])) for r in rows)
  assert (c_a, c_b) == (3 * row, 3 * row)
