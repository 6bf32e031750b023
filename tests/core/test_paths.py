"""Paths for any pytree (containers, None, nnx, equinox) and masks keeping odd structures."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune
from jaxprune import filters
from jaxprune.core import flatten_with_paths, tree_paths


ODD_TREES = [
    [jnp.ones((3, 3)), (jnp.ones((2, 4)), None), jnp.ones(3)],
    {"a": None, "b": (jnp.ones((4, 2)),), "c": [jnp.float32(1.0)]},
    (jnp.ones((2, 2)),),
]


def test_paths_of_nested_containers_with_none():
  tree = {"enc": [{"kernel": 1, "bias": None}, (2, 3)], "head": {"w": 4}}
  paths, leaves, _ = flatten_with_paths(tree)
  assert paths == ["enc/0/kernel", "enc/1/0", "enc/1/1", "head/w"]
  assert leaves == [1, 2, 3, 4]


def test_nnx_state_value_suffix_is_dropped():
  model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  paths = flatten_with_paths(nnx.state(model, nnx.Param))[0]
  assert paths == ["bias", "kernel"]


def test_equinox_module_paths():
  model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
  params = eqx.filter(model, eqx.is_array)
  paths = flatten_with_paths(params)[0]
  assert paths == ["layers/0/weight", "layers/0/bias", "layers/1/weight", "layers/1/bias"]


def test_tree_paths_keeps_structure():
  assert tree_paths([{"a": 0}, (0,)]) == [{"a": "0/a"}, ("1/0",)]


def test_regex_callable_and_combinators():
  params = {"enc": {"kernel": np.ones((2, 2)), "bias": np.ones(2)},
            "dec": {"kernel": np.ones((2, 2))}}
  assert filters.select(params, "enc/kernel") == [False, False, True]
  assert filters.select(params, lambda p, x: p.startswith("dec")) == [True, False, False]
  both = filters.regex("kernel") & ~filters.regex("^dec")
  assert filters.select(params, both) == [False, False, True]
  assert filters.select(params, ["bias", "dec"]) == [True, True, False]
  assert filters.select(params, filters.everything) == [True, True, True]


@pytest.mark.parametrize("tree", ODD_TREES)
def test_masks_keep_structure_of_odd_pytrees(tree):
  scores = jaxprune.scores.magnitude(tree)
  for fn in (lambda s: jaxprune.masks.topk(s, 0.5), lambda s: jaxprune.masks.global_topk(s, 0.5)):
    m = fn(scores)
    assert jax.tree.structure(m, is_leaf=lambda x: x is None) == jax.tree.structure(
        jax.tree.map(lambda x: None if x.ndim < 2 else x, tree), is_leaf=lambda x: x is None)
    pruned = jaxprune.apply_masks(tree, m)
    assert jax.tree.structure(pruned) == jax.tree.structure(tree)


def test_nnx_state_round_trip():
  model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  m = jaxprune.masks.topk(jaxprune.scores.magnitude(state), 0.75)
  nnx.update(model, jaxprune.apply_masks(state, m))
  assert int(jnp.sum(model.kernel[...] != 0)) == 8
  np.testing.assert_array_equal(np.asarray(model.bias[...]), 0.0)  # untouched zeros


def test_equinox_round_trip():
  model = eqx.nn.MLP(6, 2, 8, 1, key=jax.random.key(0))
  params, static = eqx.partition(model, eqx.is_array)
  m = jaxprune.masks.topk(jaxprune.scores.magnitude(params), 0.5)
  pruned = eqx.combine(jaxprune.apply_masks(params, m), static)
  assert int(jnp.sum(pruned.layers[0].weight == 0)) == 24
  assert pruned(jnp.ones(6)).shape == (2,)


def test_non_array_leaves_are_ignored():
  model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))  # holds activation functions
  scores = jaxprune.scores.magnitude(model)
  m = jaxprune.masks.topk(scores, 0.5)
  assert m.activation is None and int(m.layers[0].weight.sum()) == 6
