"""jaxprune.allocate: ERK against its formula, uniform, custom, zero-size leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import allocate


def test_erk_matches_total_and_makes_small_layers_dense():
  params = {"tiny": np.zeros((2, 2)), "mid": np.zeros((32, 32)), "big": np.zeros((256, 256))}
  alloc = allocate.erk(params, 0.95)
  assert alloc["tiny"] == 0.0
  assert alloc["big"] > alloc["mid"] > 0
  kept = sum((1 - alloc[k]) * params[k].size for k in params)
  total = sum(x.size for x in params.values())
  assert kept / total == pytest.approx(0.05, rel=1e-9)


def test_erk_reference_formula():
  params = {"a": np.zeros((10, 20)), "b": np.zeros((3, 3, 4, 8))}
  alloc = allocate.erk(params, 0.8)
  ratio = {k: sum(v.shape) / v.size for k, v in params.items()}
  eps = 0.2 * sum(v.size for v in params.values()) / sum(ratio[k] * params[k].size for k in params)
  for k in params:
    assert 1 - alloc[k] == pytest.approx(eps * ratio[k])


def test_custom_and_uniform():
  params = {"embed": np.zeros((8, 4)), "dense": np.zeros((4, 4)), "bias": np.zeros(4)}
  assert allocate.uniform(params, 0.5) == {"embed": 0.5, "dense": 0.5, "bias": None}
  got = allocate.custom(params, {"emb": 0.2, ".*": 0.7})
  assert got == {"embed": 0.2, "dense": 0.7, "bias": None}
  with pytest.raises(ValueError, match="matched no selected leaf"):
    allocate.custom(params, {"decoder": 0.5})
  with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
    allocate.uniform(params, 1.5)


def test_zero_size_leaves_are_ignored():
  """Issue 10.7: one zero-size leaf made every ERK sparsity NaN."""
  params = {"empty": np.zeros((0, 8)), "a": np.zeros((10, 20)), "b": np.zeros((3, 3, 4, 8))}
  alloc = allocate.erk(params, 0.8)
  assert alloc["empty"] is None
  without = allocate.erk({k: v for k, v in params.items() if k != "empty"}, 0.8)
  assert alloc["a"] == without["a"] and alloc["b"] == without["b"]
  assert not np.isnan(alloc["a"])
  assert allocate.uniform(params, 0.5)["empty"] is None
  assert allocate.custom(params, {"a": 0.5}, default=0.1)["empty"] is None


def test_prune_and_rigl_with_erk_and_a_zero_size_leaf():
  params = {"empty": jnp.zeros((0, 4)), "w": jax.random.normal(jax.random.key(0), (8, 8)),
            "v": jax.random.normal(jax.random.key(1), (8, 4))}
  tx = jaxprune.prune(sparsity=0.5, every=1, allocate=allocate.erk)
  _, state = tx.update(params, tx.init(params), params)
  assert state.masks["empty"] is None
  assert int(state.masks["w"].sum() + state.masks["v"].sum()) > 0
  rigl = jaxprune.rigl(optax.sgd(0.1), 0.5, end=10, key=0)
  assert rigl.init(params).masks["empty"] is None
