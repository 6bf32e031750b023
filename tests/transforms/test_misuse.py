"""Issue 10: misuse of the training transforms is detected, never silently wrong."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune.transforms import MisplacedPruneWarning, masks_of, prune, rigl


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(k1, (8, 8)), "v": jax.random.normal(k2, (8, 4)),
          "b": jnp.zeros(4)}


def _loss(params):
  x = jnp.linspace(-1.0, 1.0, 16).reshape(2, 8)
  return jnp.sum(jnp.tanh(x @ params["w"]) @ params["v"] + params["b"]) ** 2


def _train(tx, steps=4):
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  jax.block_until_ready(params)
  jax.effects_barrier()
  return params, state


PRUNE = dict(sparsity=0.5, every=1)
MISPLACED = {
    "prune_first": lambda: optax.chain(prune(**PRUNE), optax.adamw(1e-2)),
    "decay_after": lambda: optax.chain(optax.adam(1e-2), prune(**PRUNE),
                                       optax.add_decayed_weights(0.1), optax.scale(0.5)),
}


@pytest.mark.parametrize("name", sorted(MISPLACED))
def test_misplaced_prune_warns(name):
  with pytest.warns(MisplacedPruneWarning, match="must be the last transform"):
    params, state = _train(MISPLACED[name]())
  masks = masks_of(state)
  assert int(jnp.sum(~masks["w"] & (params["w"] != 0))) > 0  # what the warning is about


@pytest.mark.parametrize("make", [
    lambda: optax.chain(optax.contrib.schedule_free_adamw(1e-2), prune(**PRUNE)),
    lambda: optax.contrib.schedule_free(optax.chain(optax.adam(1e-2), prune(**PRUNE)), 1.0)])
def test_schedule_free_is_refused(make):
  tx = make()
  with pytest.raises(ValueError, match="schedule-free .* not supported"):
    masks_of(tx.init(_params()))


def test_well_placed_prune_is_silent():
  with warnings.catch_warnings():
    warnings.simplefilter("error", MisplacedPruneWarning)
    params, state = _train(optax.chain(optax.adamw(1e-2, weight_decay=0.1), prune(**PRUNE)))
  masks = masks_of(state)
  assert int(jnp.sum(~masks["w"] & (params["w"] != 0))) == 0


def test_percent_and_decreasing_schedules_are_refused_when_built():
  with pytest.raises(ValueError, match="not percentages"):
    prune(sparsity=optax.linear_schedule(0, 90, 100))
  with pytest.raises(ValueError, match="decreases from 0.9"):
    prune(sparsity=optax.linear_schedule(0.9, 0.1, 100), end=200)
  prune(sparsity=optax.linear_schedule(0.9, 0.1, 100), end=200, straight_through=True)
  with pytest.raises(ValueError, match="final=0.2 is below initial=0.8"):
    jaxprune.schedules.polynomial(0.2, 0, 10, initial=0.8)


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.25])
def test_traced_bad_sparsity_fails_loudly(value):
  tx = optax.chain(optax.sgd(0.1), optax.inject_hyperparams(prune)(sparsity=0.5, every=1))
  params = _params()
  state = tx.init(params)
  state[1].hyperparams["sparsity"] = jnp.float32(value)
  with pytest.raises(Exception, match=r"not in \[0, 1\]"):
    _, state = jax.jit(tx.update)(params, state, params)
    jax.block_until_ready(state)
    jax.effects_barrier()


def test_generic_errors_say_what_was_expected():
  with pytest.raises(TypeError, match="real float in"):
    prune(sparsity=0.5 + 0.1j)
  with pytest.raises(TypeError, match="scores.random: key must be a jax.random.key"):
    jaxprune.scores.random(_params(), None)
  with pytest.raises(ValueError, match="end=5 is before begin=10"):
    rigl(optax.sgd(0.1), 0.5, begin=10, end=5, key=0)


def test_one_mask_rule_in_rigl_and_keep_sparse():
  params = _params()
  floats = {"w": (jnp.arange(64.0).reshape(8, 8) % 2), "v": None, "b": None}
  tx = rigl(optax.sgd(0.1), masks=floats, end=10)
  assert jnp.array_equal(tx.init(params).masks["w"], floats["w"] != 0)
  kept = jaxprune.keep_sparse(floats).init(params).masks["w"]
  assert kept.dtype == jnp.bool_ and int(kept.sum()) == 32


def test_select_gets_the_extras_it_names():
  seen = {}

  def select(scores, sparsity, *, where=None, previous=None, temperature):
    seen["temperature"] = temperature
    return jaxprune.masks.topk(scores, sparsity, where=where, previous=previous)

  params = _params()
  tx = prune(sparsity=0.5, every=1, select=select)
  tx.update(params, tx.init(params), params, temperature=2.0, batch=None)
  assert seen == {"temperature": 2.0}
  with pytest.raises(ValueError, match=r"needs the argument\(s\) \['temperature'\]"):
    tx.update(params, tx.init(params), params)


def test_float64_scores_keep_their_precision():
  # Two scores that differ only beyond float32 precision: the float64 order is kept.
  jax.config.update("jax_enable_x64", True)
  try:
    scores = {"w": np.array([[1.0 + 1e-12, 1.0], [0.0, 0.0]])}
    masks = jaxprune.masks.topk(scores, 0.75)
    assert np.asarray(masks["w"]).tolist() == [[True, False], [False, False]]
  finally:
    jax.config.update("jax_enable_x64", False)
