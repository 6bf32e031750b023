"""Exact masks against sort-based references, on random and tie-heavy inputs."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import jaxprune
from jaxprune import masks
from reference import global_reference, topk_reference

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _scores(draw, shape, ties: bool):
  if ties:
    values = draw(hnp.arrays(np.int8, shape, elements=st.integers(-3, 3)))
    values = values.astype(np.float32)
  else:
    # No subnormals: XLA on CPU flushes them to zero, so they tie with 0 (documented).
    values = draw(hnp.arrays(np.float32, shape, elements=st.floats(
        -1e6, 1e6, width=32, allow_nan=False, allow_subnormal=False)))
  return values


SHAPES = [(1, 1), (3, 5), (4, 4), (2, 3, 4), (7, 1)]  # few shapes: compiled masks are reused


@st.composite
def score_arrays(draw):
  shape = draw(st.sampled_from(SHAPES))
  values = _scores(draw, shape, draw(st.booleans()))
  if draw(st.booleans()):
    nan_mask = draw(hnp.arrays(np.bool_, shape))
    values = np.where(nan_mask, np.nan, values).astype(np.float32)
  return values


sparsities = st.floats(0.0, 1.0, allow_subnormal=False)


@given(score_arrays(), sparsities)
def test_topk_matches_sort_reference(x, s):
  got = masks.topk({"w": jnp.asarray(x)}, s)["w"]
  np.testing.assert_array_equal(np.asarray(got), topk_reference(x, s))


@given(score_arrays(), sparsities, st.sampled_from(DTYPES))
def test_topk_low_precision_matches_reference(x, s, dtype):
  low = jnp.asarray(x).astype(dtype)
  got = masks.topk([low], s)[0]
  np.testing.assert_array_equal(np.asarray(got), topk_reference(np.asarray(low, np.float32), s))


@given(score_arrays(), st.integers(0, 1000).map(lambda i: i / 1000))
def test_jit_with_traced_sparsity_equals_eager(x, s):
  # Decimal sparsities as users write them: a traced sparsity is float32, and a product within
  # float32 resolution of a half rounds half to even, as Python does for the decimal value.
  eager = masks.topk([jnp.asarray(x)], s)[0]
  jitted = jax.jit(lambda sc, sp: masks.topk(sc, sp))([jnp.asarray(x)], s)[0]
  np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))


def test_traced_sparsity_does_not_retrace():
  traces = []

  @jax.jit
  def f(x, s):
    traces.append(1)
    return masks.topk(x, s)

  x = {"w": jnp.arange(20.0).reshape(4, 5)}
  counts = [int(f(x, s)["w"].sum()) for s in (0.1, 0.5, 0.9)]
  assert counts == [18, 10, 2] and len(traces) == 1


@given(score_arrays(), sparsities, sparsities)
def test_masks_nest(x, s1, s2):
  lo, hi = sorted((s1, s2))
  dense, sparse = (masks.topk([jnp.asarray(x)], s)[0] for s in (lo, hi))
  assert not np.any(np.asarray(sparse) & ~np.asarray(dense))


@given(score_arrays(), sparsities)
def test_previous_is_idempotent(x, s):
  first = masks.topk([jnp.asarray(x)], s)
  again = masks.topk([jnp.asarray(x)], s, previous=first)
  np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(again[0]))


@given(score_arrays(), sparsities, sparsities, st.data())
def test_previous_pruned_stay_pruned(x, s_prev, s, data):
  prev = data.draw(hnp.arrays(np.bool_, x.shape))
  got = np.asarray(masks.topk([jnp.asarray(x)], s, previous=[jnp.asarray(prev)])[0])
  assert not np.any(got & ~prev)
  want = topk_reference(x, s, eligible=prev)
  k = x.size - round(s * x.size)
  assert got.sum() == min(k, prev.sum())
  np.testing.assert_array_equal(got, want)


@st.composite
def leaf_lists(draw):
  shapes = draw(st.sampled_from([[(3, 5)], [(1, 1), (4, 4)], [(2, 3, 4), (7, 1), (3, 5)]]))
  ties = draw(st.booleans())
  return [_scores(draw, shape, ties) for shape in shapes]


@given(leaf_lists(), sparsities)
def test_global_topk_matches_concatenated_sort(leaves, s):
  got = masks.global_topk([jnp.asarray(x) for x in leaves], s)
  for g, want in zip(got, global_reference(leaves, s)):
    np.testing.assert_array_equal(np.asarray(g), want)


@given(leaf_lists(), sparsities)
def test_global_total_is_exact_under_jit(leaves, s):
  s = float(np.float32(s))
  got = jax.jit(masks.global_topk)([jnp.asarray(x) for x in leaves], s)
  total = sum(x.size for x in leaves)
  assert sum(int(g.sum()) for g in got) == total - round(s * total)


def test_global_normalize_balances_layers():
  small = jnp.full((4, 4), 1e-3) + jnp.arange(16.0).reshape(4, 4) * 1e-5
  large = jnp.full((4, 4), 1.0) + jnp.arange(16.0).reshape(4, 4) * 1e-2
  plain = masks.global_topk([small, large], 0.5)
  assert int(plain[0].sum()) == 0 and int(plain[1].sum()) == 16
  balanced = masks.global_topk([small, large], 0.5, normalize="max")
  assert 0 < int(balanced[0].sum()) < 16


def test_nan_ranks_lowest():
  x = jnp.array([[jnp.nan, -jnp.inf, 0.0, jnp.nan]])
  assert masks.topk([x], 0.5)[0].tolist() == [[False, True, True, False]]
  assert masks.topk([x], 0.25)[0].tolist() == [[True, True, True, False]]


def test_sparsity_pytree_and_where():
  params = {"a": jnp.ones((4, 4)), "b": jnp.ones((2, 8)), "c": jnp.ones(4)}
  got = masks.topk(params, {"a": 0.5, "b": None, "c": None})
  assert got["b"] is None and got["c"] is None and int(got["a"].sum()) == 8
  got = masks.topk(params, 0.25, where="b")
  assert got["a"] is None and int(got["b"].sum()) == 12


def test_sparsity_from_allocate_erk():
  params = {"a": jnp.ones((16, 16)), "b": jnp.ones((64, 64)), "bias": jnp.ones(64)}
  alloc = jaxprune.allocate.erk(params, 0.9)
  got = masks.topk(jaxprune.scores.magnitude(params), alloc)
  for path in ("a", "b"):
    n = params[path].size
    assert int(got[path].sum()) == n - round(alloc[path] * n)
  assert got["bias"] is None
