"""N:M, block and channel masks against straightforward numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from jaxprune import masks
from reference import rank_order, topk_reference


def n_of_m_reference(x, n, m, axis, eligible=None):
  x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
  e = np.ones(x.shape, bool) if eligible is None else np.moveaxis(eligible, axis, -1)
  groups, egroups = x.reshape(-1, m), e.reshape(-1, m)
  keep = np.zeros(groups.shape, bool)
  for g in range(groups.shape[0]):
    order = [i for i in rank_order(groups[g]) if egroups[g, i]]
    keep[g, order[:n]] = True
  return np.moveaxis(keep.reshape(x.shape), -1, axis)


@st.composite
def nm_case(draw):
  m = draw(st.sampled_from([1, 2, 4]))
  n = draw(st.integers(0, m))
  shape = draw(st.sampled_from([(3, 8), (4, 4), (2, 4, 8)]))
  values = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(
      [0.0, 1.0, -1.0, 2.5, np.nan])))
  axis = draw(st.sampled_from([-1, 0])) if shape[0] % m == 0 else -1
  return values, n, m, axis


@given(nm_case(), st.booleans(), st.data())
def test_n_of_m_matches_reference(case, use_previous, data):
  x, n, m, axis = case
  prev = data.draw(hnp.arrays(np.bool_, x.shape)) if use_previous else None
  got = masks.n_of_m([jnp.asarray(x)], n, m, axis,
                     previous=None if prev is None else [jnp.asarray(prev)])[0]
  np.testing.assert_array_equal(np.asarray(got), n_of_m_reference(x, n, m, axis, prev))


def test_n_of_m_two_of_four_exact():
  x = jax.random.normal(jax.random.key(0), (16, 32))
  got = masks.n_of_m({"w": x}, 2, 4)["w"]
  assert np.all(np.asarray(got).reshape(16, 8, 4).sum(-1) == 2)


def block_reference(x, s, shape):
  h, w = shape
  blocks = np.abs(x).reshape(x.shape[0] // h, h, x.shape[1] // w, w).sum((1, 3))
  keep = topk_reference(blocks, s)
  return np.repeat(np.repeat(keep, h, 0), w, 1)


@given(hnp.arrays(np.float32, (8, 12), elements=st.integers(-4, 4).map(float)),
       st.floats(0, 1, allow_subnormal=False), st.sampled_from([(2, 2), (4, 3), (1, 4), (8, 12)]))
def test_blocks_matches_reference(x, s, shape):
  got = masks.blocks([jnp.abs(jnp.asarray(x))], s, shape)[0]
  np.testing.assert_array_equal(np.asarray(got), block_reference(x, s, shape))


@given(hnp.arrays(np.float32, (3, 4, 6), elements=st.integers(0, 3).map(float)),
       st.floats(0, 1, allow_subnormal=False), st.sampled_from([-1, 0, 1]))
def test_channels_matches_reference(x, s, axis):
  got = np.asarray(masks.channels([jnp.asarray(x)], s, axis=axis)[0])
  other = tuple(a for a in range(3) if a != axis % 3)
  keep = topk_reference(x.sum(other), s)
  np.testing.assert_array_equal(got, np.broadcast_to(np.expand_dims(keep, other), x.shape))


def test_channels_previous_keeps_pruned_channels_pruned():
  x = jnp.arange(24.0).reshape(4, 6)
  first = masks.channels([x], 0.5)
  second = masks.channels([-x], 0.5, previous=first)  # reversed scores would pick others
  np.testing.assert_array_equal(np.asarray(second[0]), np.asarray(first[0]))


def test_structured_under_jit_with_traced_sparsity():
  x = jax.random.uniform(jax.random.key(1), (8, 8))
  f = jax.jit(lambda x, s: masks.blocks([x], s, (2, 2))[0])
  assert int(f(x, 0.75).sum()) == 16 and int(f(x, 0.5).sum()) == 32
  g = jax.jit(lambda x, s: masks.channels([x], s)[0])
  assert int(g(x, 0.25).sum()) == 48


@pytest.mark.parametrize("call, message", [
    (lambda x: masks.n_of_m(x, 2, 3), "not divisible by m=3"),
    (lambda x: masks.n_of_m(x, 5, 4), "0 <= n <= m"),
    (lambda x: masks.n_of_m(x, 2.0, 4), "must be a Python int"),
    (lambda x: masks.blocks(x, 0.5, (3, 3)), "not divisible"),
    (lambda x: masks.blocks(x, 0.5, (0, 2)), "positive ints"),
    (lambda x: masks.channels(x, 0.5, axis=3), "out of range"),
    (lambda x: masks.channels(x, 0.5, reduce="median"), "reduce must be one of"),
])
def test_structured_errors_name_the_problem(call, message):
  with pytest.raises((ValueError, TypeError), match=message):
    call({"layer": {"kernel": jnp.ones((4, 4))}})


def test_n_of_m_error_names_the_path():
  with pytest.raises(ValueError, match="'enc/0/kernel'"):
    masks.n_of_m({"enc": [{"kernel": jnp.ones((4, 6))}]}, 2, 4)
