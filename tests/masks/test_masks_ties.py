"""Tie-heavy inputs: exact against a sort, and ties cost a bounded number of extra passes.

Arrays hold more than 4096 entries so that the search samples them (strides > 1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.masks import _search
from reference import check_top_k

SHAPE = (128, 96)
top_k = jax.jit(lambda xs, es, k: _search.top_k(xs, es, k))  # k traced: one compile per shapes
stats = jax.jit(lambda xs, es, k: _search.search_stats(xs, es, k))


def check(leaves, eligible, k):
  check_top_k(top_k, leaves, eligible, k)


def forced_tie(x, k):
  """``x`` with the (k+1)-th largest entry set equal to the k-th: the k-th value is tied."""
  flat = np.sort(x.ravel())[::-1]
  return np.where(x == flat[k], flat[k - 1], x).astype(x.dtype)


def inputs(rng):
  x = rng.normal(size=SHAPE).astype(np.float32)
  return {
      "all_equal": np.full(SHAPE, 0.25, np.float32),
      "two_values": (rng.random(SHAPE) < 0.5).astype(np.float32),
      "few_levels": np.round(x * 2).astype(np.float32),
      "tie_at_k": forced_tie(x, 1229),
      "nan_ties": np.where(rng.random(SHAPE) < 0.6, np.nan, x).astype(np.float32),
  }


KS = [1, 1229, 6144, 12287]  # 1229 = 10% of the entries (the forced tie sits there)


@pytest.mark.parametrize("kind", sorted(inputs(np.random.default_rng(0))))
def test_tie_heavy_leaf_matches_sort(kind):
  rng = np.random.default_rng(1)
  x = inputs(rng)[kind]
  eligible = rng.random(SHAPE) < 0.8
  for k in KS:
    check([x], [None], k)
  check([x], [eligible], 1229)


def test_ties_across_leaves_keep_leaf_order():
  rng = np.random.default_rng(2)
  leaves = [np.full(SHAPE, 1.0, np.float32), (rng.random((64, 80)) < 0.5).astype(np.float32),
            np.full((5000,), 1.0, np.float32)]
  total = sum(x.size for x in leaves)
  for k in (5, SHAPE[0] * SHAPE[1] + 3, total - 2500, total):
    check(leaves, [None, None, None], k)


def test_long_flat_leaf_with_ties():
  x = np.ones(1024 * 64, np.float32)  # searched as rows of 1024
  x[::3] = 2.0
  for k in (100, 30000):
    check([x], [None], k)


def test_ties_cost_a_bounded_number_of_extra_passes():
  """A tie at the k-th adds at most one read of one leaf and a few counting passes.

  (Before, ties ran a bisection over the flat index: log2(n) extra passes.)
  """
  rng = np.random.default_rng(3)
  x = rng.normal(size=(512, 512)).astype(np.float32)
  k = x.size // 10
  plain = {a: int(b) for a, b in stats([jnp.asarray(x)], [None], k).items()}
  tied = {a: int(b) for a, b in stats([jnp.asarray(forced_tie(x, k))], [None], k).items()}
  assert plain["tie_reads"] == 0 and tied["tie_reads"] == 1
  assert tied["passes"] <= plain["passes"] + 6, (plain, tied)
  assert tied["small_steps"] <= 2 * (int(np.log2(512)) + 2)  # over 512 row counts + one row
  for kind in ("all_equal", "two_values"):
    s = stats([jnp.asarray(inputs(rng)[kind])], [None], 1229)
    assert int(s["passes"]) <= 4 and int(s["tie_reads"]) <= 1, (kind, s)
