"""Tests of jaxprune.transforms._reset: zeroing entries of any optax optimizer state."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune.transforms._reset import params_like_paths, reset_optimizer_state


def _params():
  return {"dense": {"kernel": jnp.arange(12.0).reshape(3, 4) / 10 - 0.5, "bias": jnp.ones(4)},
          "extra": [jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), None, (jnp.full((2,), 0.5),)]}


def _entries(params, seed=0):
  """Random bool entries for the kernels, None elsewhere."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.random(x.shape) < 0.5) if x.ndim >= 2 else None,
                      params)


def _stepped(tx, params, steps=3):
  """The state of ``tx`` after a few updates with nonzero gradients (so moments are nonzero)."""
  state = tx.init(params)
  for i in range(steps):
    grads = jax.tree.map(lambda x: jnp.sin(x * (i + 2.0)) + 0.3, params)
    _, state = tx.update(grads, state, params)
  return state


def _check_reset(before, after, entries, params):
  """``after`` equals ``before`` with the entries zeroed (references computed with numpy)."""
  for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    assert a.dtype == b.dtype and a.shape == b.shape
  e_leaves = jax.tree_util.tree_structure(params).flatten_up_to(entries)
  for b, a, e in zip(jax.tree.leaves(before), jax.tree.leaves(after), e_leaves):
    if e is None:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
      expect = np.where(np.asarray(e), 0, np.asarray(b, np.float32))
      np.testing.assert_array_equal(np.asarray(a, np.float32), expect)


# Explicit accessors of the per-parameter sub-trees (independent of the generic walk).
OPTIMIZERS = {
    "adam": (lambda: optax.adam(1e-2), lambda s: [s[0].mu, s[0].nu], lambda s: [s[0].count]),
    "adamw": (lambda: optax.adamw(1e-2, weight_decay=0.1), lambda s: [s[0].mu, s[0].nu],
              lambda s: [s[0].count]),
    "lion": (lambda: optax.lion(1e-3), lambda s: [s[0].mu], lambda s: [s[0].count]),
    "sgd_momentum": (lambda: optax.sgd(0.1, momentum=0.9), lambda s: [s[0].trace],
                     lambda s: []),
    "chain_clip_adamw": (
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
        lambda s: [s[1][0].mu, s[1][0].nu], lambda s: [s[1][0].count]),
    "multisteps": (
        lambda: optax.MultiSteps(optax.adam(1e-2), 3).gradient_transformation(),
        lambda s: [s.inner_opt_state[0].mu, s.inner_opt_state[0].nu, s.acc_grads],
        lambda s: [s.mini_step, s.gradient_step, s.inner_opt_state[0].count]),
    "inject_hyperparams": (
        lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
        lambda s: [s.inner_state[0].mu, s.inner_state[0].nu],
        lambda s: [s.count, s.hyperparams["learning_rate"]]),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_reset_any_optimizer(name):
  make, per_param, scalars = OPTIMIZERS[name]
  params = _params()
  tx = make()
  state = _stepped(tx, params, steps=4)
  entries = _entries(params)
  for tree in per_param(state):  # the moments are nonzero before: the test can fail
    assert any(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(tree))
  new = reset_optimizer_state(tx, state, params, entries)
  assert jax.tree.structure(new) == jax.tree.structure(state)
  for before, after in zip(per_param(state), per_param(new)):
    _check_reset(before, after, entries, params)
  for before, after in zip(scalars(state), scalars(new)):
    np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
  # everything that is not per-parameter is unchanged
  touched = {id(x) for tree in per_param(new) for x in jax.tree.leaves(tree)}
  for b, a in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
    if id(a) not in touched:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_params_like_paths_lists_the_per_parameter_subtrees():
  params = _params()
  paths = lambda tx: params_like_paths(tx, tx.init(params), params)
  assert paths(optax.adam(1e-3)) == ["0/mu", "0/nu"]
  assert paths(optax.sgd(0.1)) == []
  multi = optax.MultiSteps(optax.lion(1e-3), 2).gradient_transformation()
  assert paths(multi) == ["inner_opt_state/0/mu", "acc_grads"]
  chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  assert paths(chain) == ["1/0/mu", "1/0/nu"]


def test_factored_statistics_are_left_alone():
  """Adafactor's factored row/column statistics are shared by a row/column: not reset."""
  params = {"w": jnp.ones((8, 6)), "b": jnp.ones(3)}
  tx = optax.adafactor(1e-3, min_dim_size_to_factor=4)
  state = _stepped(tx, params, steps=2)
  entries = {"w": jnp.zeros((8, 6), bool).at[0, 0].set(True), "b": None}
  assert params_like_paths(tx, state, params) == ["0/v"]  # b's unfactored statistics
  new = reset_optimizer_state(tx, state, params, entries)
  for b, a in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_single_array_params_and_no_entries():
  params = jnp.arange(6.0).reshape(2, 3)
  tx = optax.adam(1e-2)
  state = _stepped(tx, params)
  entries = jnp.array([[True, False, False], [False, False, True]])
  new = reset_optimizer_state(tx, state, params, entries)
  _check_reset(state[0].mu, new[0].mu, entries, params)
  assert int(new[0].count) == int(state[0].count)
  assert reset_optimizer_state(tx, state, params, None) is state


def test_jit_bf16_moments_and_dtypes():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  tx = optax.adam(1e-2, mu_dtype=jnp.bfloat16)
  state = _stepped(tx, params)
  entries = _entries(params, seed=3)
  new = jax.jit(lambda *a: reset_optimizer_state(tx, *a))(state, params, entries)
  assert new[0].mu["dense"]["kernel"].dtype == jnp.bfloat16
  _check_reset(state[0].mu, new[0].mu, entries, params)
  _check_reset(state[0].nu, new[0].nu, entries, params)


def test_sharded_state_keeps_sharding(mesh):
  sharding = NamedSharding(mesh, P("x", None))
  params = {"w": jax.device_put(jnp.arange(64.0).reshape(16, 4), sharding), "b": jnp.ones(4)}
  tx = optax.adam(1e-2)
  state = _stepped(tx, params)
  entries = {"w": jax.device_put(jnp.arange(64).reshape(16, 4) % 3 == 0, sharding), "b": None}
  new = jax.jit(lambda *a: reset_optimizer_state(tx, *a))(state, params, entries)
  assert new[0].mu["w"].sharding.is_equivalent_to(sharding, 2)
  _check_reset(state[0].mu, new[0].mu, entries, params)


def test_bad_entries_raise_clear_errors():
  params = _params()
  tx = optax.adam(1e-3)
  state = tx.init(params)
  bad_shape = jax.tree.map(lambda x: None, params)
  bad_shape["dense"]["kernel"] = jnp.ones((4, 3), bool)
  with pytest.raises(ValueError, match="dense/kernel.*shape"):
    reset_optimizer_state(tx, state, params, bad_shape)
  bad_dtype = jax.tree.map(lambda x: None, params)
  bad_dtype["dense"]["kernel"] = jnp.ones((3, 4))
  with pytest.raises(TypeError, match="dense/kernel.*bool"):
    reset_optimizer_state(tx, state, params, bad_dtype)
  with pytest.raises(ValueError, match="same tree structure"):
    reset_optimizer_state(tx, state, params, {"dense": None})


_CHAIN = optax.chain(optax.clip(1.0), optax.sgd(0.1, momentum=0.5), optax.scale_by_adam())


@jax.jit
def _stepped_and_reset(params, entries):
  state = _stepped(_CHAIN, params, steps=2)
  return state, reset_optimizer_state(_CHAIN, state, params, entries)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), density=st.floats(0.0, 1.0, allow_subnormal=False), scale=st.floats(0.1, 10.0))
def test_reset_matches_reference(seed, density, scale):
  rng = np.random.default_rng(seed)
  params = ({"w": jnp.asarray(scale * rng.normal(size=(4, 5)), jnp.float32)},
            [jnp.asarray(rng.normal(size=(5,)), jnp.float32)])
  entries = ({"w": jnp.asarray(rng.random((4, 5)) < density)}, [None])
  state, new = _stepped_and_reset(params, entries)
  _check_reset(state[1][0].trace, new[1][0].trace, entries, params)
  _check_reset(state[2].mu, new[2].mu, entries, params)
  _check_reset(state[2].nu, new[2].nu, entries, params)
  chex.assert_trees_all_equal(state[2].count, new[2].count)


def test_fresh_state_values_for_adagrad():
  """Reset entries get the value of a fresh ``tx.init(params)``: the initial accumulator."""
  params = _params()
  tx = optax.adagrad(0.1, initial_accumulator_value=0.25)
  state = _stepped(tx, params)
  entries = _entries(params, seed=5)
  new = reset_optimizer_state(tx, state, params, entries)  # default: fresh=tx.init(params)
  e_leaves = jax.tree.structure(params).flatten_up_to(entries)
  for before, after, e in zip(jax.tree.leaves(state[0].sum_of_squares),
                              jax.tree.leaves(new[0].sum_of_squares), e_leaves):
    if e is None:
      np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
    else:
      np.testing.assert_array_equal(np.asarray(after),
                                    np.where(np.asarray(e), 0.25, np.asarray(before)))
  with pytest.raises(ValueError, match="fresh must have the structure"):
    reset_optimizer_state(tx, state, params, entries, fresh=optax.adam(1e-3).init(params))


# name: (optimizer, accessors of the elementwise per-parameter leaves of the "w" kernel)
PARAM_SHAPED = {
    "masked_adam": (lambda: optax.masked(optax.adam(1e-2), {"w": True, "b": False}),
                    lambda s: [s.inner_state[0].mu["w"], s.inner_state[0].nu["w"]]),
    "adafactor_momentum": (
        lambda: optax.adafactor(1e-2, min_dim_size_to_factor=4, momentum=0.9),
        lambda s: [s[4].ema["w"]]),
    "multisteps_object": (lambda: optax.MultiSteps(optax.adam(1e-2), 2),
                          lambda s: [s.acc_grads["w"], s.inner_opt_state[0].mu["w"]]),
    "inject_chain": (lambda: optax.inject_hyperparams(
        lambda learning_rate: optax.chain(optax.clip(1.0), optax.adamw(learning_rate)))(
            learning_rate=1e-2), lambda s: [s.inner_state[1][0].mu["w"]]),
    "partition": (lambda: optax.partition({"a": optax.adam(1e-2), "b": optax.sgd(0.1)},
                                          {"w": "a", "b": "b"}),
                  lambda s: [s.inner_states["a"].inner_state[0].mu["w"]]),
}


@pytest.mark.parametrize("name", sorted(PARAM_SHAPED))
def test_param_shaped_traversal_finds_wrapped_state(name):
  """Issue 10.5: matching by shape found nothing under optax.masked or adafactor."""
  make, leaves = PARAM_SHAPED[name]
  params = {"w": jnp.arange(1.0, 49.0).reshape(8, 6) / 10, "b": jnp.ones(3)}
  tx = make()
  state = tx.init(params)
  for i in range(3):  # odd: MultiSteps' accumulator is not empty
    grads = jax.tree.map(lambda x: jnp.sin(x * (i + 2.0)) + 0.3, params)
    _, state = tx.update(grads, state, params)
  entries = {"w": jnp.asarray(np.random.default_rng(0).random((8, 6)) < 0.5), "b": None}
  before = leaves(state)
  assert all(float(jnp.abs(x).sum()) > 0 for x in before)  # nonzero: the test can fail
  assert params_like_paths(tx, state, params)
  after = leaves(jax.jit(lambda s: reset_optimizer_state(tx, s, params, entries))(state))
  for b, a in zip(before, after):
    np.testing.assert_array_equal(np.asarray(a), np.where(entries["w"], 0, np.asarray(b)))
