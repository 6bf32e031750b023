"""Tests of jaxprune.transforms._lottery: iterative magnitude pruning with rewinding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune.transforms._dynamic import static_sparse
from jaxprune.transforms._lottery import lottery_round, lottery_sparsity


def _params(seed, shapes=((5, 7), (4, 3))):
  rng = np.random.default_rng(seed)
  return {"layers": [{"kernel": jnp.asarray(rng.normal(size=s), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=s[-1:]), jnp.float32)}
                     for s in shapes], "scale": None}


def _reference_leaf(p, old, fraction):
  """numpy: keep the ``k - round(f * k)`` largest |p| among the ``k`` remaining (ties: index)."""
  flat = np.abs(np.asarray(p, np.float64)).ravel()
  eligible = np.ones(flat.size, bool) if old is None else np.asarray(old).ravel()
  k = int(eligible.sum())
  keep = k - int(round(fraction * k))
  idx = np.flatnonzero(eligible)
  order = idx[np.lexsort((idx, -flat[idx]))]
  new = np.zeros(flat.size, bool)
  new[order[:keep]] = True
  return new.reshape(np.shape(p))


def _kernels(tree):
  return [layer["kernel"] for layer in tree["layers"]]


def test_rounds_match_numpy_reference_and_rewind():
  trained, init = _params(0), _params(1)
  masks, expected = None, [None, None]
  for _ in range(4):
    masks, rewound = lottery_round(trained, init, masks, 0.2)
    expected = [_reference_leaf(p, m, 0.2) for p, m in zip(_kernels(trained), expected)]
    for m, e, r, w0 in zip(_kernels(masks), expected, _kernels(rewound), _kernels(init)):
      np.testing.assert_array_equal(np.asarray(m), e)
      np.testing.assert_array_equal(np.asarray(r), np.where(e, np.asarray(w0), 0.0))
    for layer_m, layer_r, layer_0 in zip(masks["layers"], rewound["layers"], init["layers"]):
      assert layer_m["bias"] is None  # biases are not pruned by default
      np.testing.assert_array_equal(np.asarray(layer_r["bias"]), np.asarray(layer_0["bias"]))
  # 35 -> 28 -> 22 -> 18 -> 14 and 12 -> 10 -> 8 -> 6 -> 5 (half to even on x.5)
  assert [int(m.sum()) for m in _kernels(masks)] == [14, 5]
  assert masks["scale"] is None and rewound["scale"] is None


def test_global_scope_matches_reference():
  trained, init = _params(2), _params(3)
  masks, _ = lottery_round(trained, init, None, 0.5, scope="global")
  masks, rewound = lottery_round(trained, init, masks, 0.5, scope="global")
  values = np.concatenate([np.abs(np.asarray(k)).ravel() for k in _kernels(trained)])
  keep = 47 - round(0.5 * 47)
  keep = keep - round(0.5 * keep)
  threshold = np.sort(values)[::-1][keep - 1]
  got = np.concatenate([np.asarray(m).ravel() for m in _kernels(masks)])
  assert got.sum() == keep
  np.testing.assert_array_equal(got, values >= threshold)
  for m, r in zip(_kernels(masks), _kernels(rewound)):
    assert np.all(np.asarray(r)[~np.asarray(m)] == 0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), fraction=st.floats(0.0, 1.0, allow_subnormal=False), rounds=st.integers(1, 4),
       shape=st.sampled_from([(1, 3), (6, 5)]))
def test_invariants(seed, fraction, rounds, shape):
  rows, cols = shape
  trained, init = _params(seed, ((rows, cols),)), _params(seed + 1, ((rows, cols),))
  masks, remaining = None, rows * cols
  for _ in range(rounds):
    previous = masks
    masks, rewound = lottery_round(trained, init, masks, fraction)
    m = np.asarray(masks["layers"][0]["kernel"])
    remaining -= round(fraction * remaining)
    assert int(m.sum()) == remaining  # exact counts, fraction of the remaining weights
    if previous is not None:
      old = np.asarray(previous["layers"][0]["kernel"])
      assert not np.any(m & ~old)  # pruned stays pruned
      w = np.abs(np.asarray(trained["layers"][0]["kernel"]))
      if (old & ~m).any() and m.any():
        assert w[m].min() >= w[old & ~m].max()  # the smallest remaining were pruned
    r = np.asarray(rewound["layers"][0]["kernel"])
    np.testing.assert_array_equal(r, np.where(m, np.asarray(init["layers"][0]["kernel"]), 0))


def test_jit_matches_eager_and_fraction_per_leaf():
  trained, init = _params(4), _params(5)
  fraction = {"layers": [{"kernel": 0.5, "bias": None}, {"kernel": 0.25, "bias": None}],
              "scale": None}
  eager, _ = lottery_round(trained, init, None, fraction)
  eager, eager_rewound = lottery_round(trained, init, eager, fraction)
  jitted = jax.jit(lottery_round)
  masks, _ = jitted(trained, init, None, fraction)
  masks, rewound = jitted(trained, init, masks, fraction)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(masks)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(eager_rewound), jax.tree.leaves(rewound)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [int(m.sum()) for m in _kernels(masks)] == [9, 7]  # 35 -> 18 -> 9; 12 -> 9 -> 7


def test_where_bf16_and_sharding(mesh):
  sharding = NamedSharding(mesh, P("x", None))
  trained = {"w": jax.device_put(jnp.arange(1.0, 33.0).reshape(16, 2), sharding).astype(
      jnp.bfloat16), "v": jnp.ones((2, 2), jnp.bfloat16)}
  init = jax.tree.map(lambda x: x * 0 + 3, trained)
  masks, rewound = lottery_round(trained, init, None, 0.25, where="w")
  assert masks["v"] is None and rewound["v"].dtype == jnp.bfloat16
  assert int(masks["w"].sum()) == 24 and rewound["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(masks["w"]).ravel(), np.arange(32) >= 8)
  assert masks["w"].sharding.is_equivalent_to(sharding, 2)
  assert rewound["w"].sharding.is_equivalent_to(sharding, 2)


def test_retraining_a_ticket_keeps_pruned_weights_zero():
  trained, init = _params(6), _params(7)
  masks, params = lottery_round(trained, init, None, 0.6)
  tx = static_sparse(optax.adam(1e-2), masks=masks)
  state = tx.init(params)

  def loss(p):
    return sum(jnp.sum(jnp.sin(layer["kernel"])) for layer in p["layers"])

  step = jax.jit(lambda p, s: _apply(tx, jax.grad(loss)(p), s, p))
  for _ in range(3):
    params, state = step(params, state)
  for m, w, w0 in zip(_kernels(masks), _kernels(params), _kernels(init)):
    m = np.asarray(m)
    assert np.all(np.asarray(w)[~m] == 0)
    assert np.all(np.asarray(w)[m] != np.asarray(w0)[m])  # kept weights did train


def _apply(tx, grads, state, params):
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def test_lottery_sparsity_and_errors():
  assert lottery_sparsity(0.2, 0) == 0.0
  np.testing.assert_allclose(lottery_sparsity(0.2, 5), 1 - 0.8**5)
  with pytest.raises(ValueError, match="rounds"):
    lottery_sparsity(0.2, -1)
  trained, init = _params(8), _params(9)
  with pytest.raises(ValueError, match="fraction.*\\[0, 1\\]"):
    lottery_round(trained, init, None, 1.5)
  with pytest.raises(ValueError, match="scope"):
    lottery_round(trained, init, None, 0.5, scope="layer")
  with pytest.raises(TypeError, match="one float fraction"):
    lottery_round(trained, init, None, {"layers": [{"kernel": 0.5, "bias": None}] * 2,
                                        "scale": None}, scope="global")
  bad = _params(9, ((5, 7), (3, 4)))
  with pytest.raises(ValueError, match="layers/1/kernel.*shape"):
    lottery_round(trained, bad, None, 0.5)
  masks, _ = lottery_round(trained, init, None, 0.5)
  # One mask rule (jaxprune.core.as_mask_leaf): a float mask means non-zero = kept.
  as_float = jax.tree.map(lambda m: m.astype(jnp.float32), masks)
  for a, b in zip(jax.tree.leaves(lottery_round(trained, init, as_float, 0.5)[0]),
                  jax.tree.leaves(lottery_round(trained, init, masks, 0.5)[0])):
    assert jnp.array_equal(a, b)
  masks["layers"][0]["kernel"] = masks["layers"][0]["kernel"].astype(jnp.complex64)
  with pytest.raises(TypeError, match="layers/0/kernel.*bool"):
    lottery_round(trained, init, masks, 0.5)
  with pytest.raises(ValueError, match="same tree structure"):
    lottery_round(trained, {"layers": []}, None, 0.5)
