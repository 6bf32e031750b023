"""Tests of jaxprune.transforms._dynamic: RigL, SET and static sparse training."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune import allocate
from jaxprune.masks import keep_count
from jaxprune.transforms import masks_of
from jaxprune.transforms import (
    SparseTrainState, cosine_drop_fraction, rigl, sparse_evolution, static_sparse)

X = jax.random.normal(jax.random.key(42), (16, 6))


def _params(seed=0, dtype=jnp.float32, dtype2=None):
  """An odd pytree: dict of tuple and list, a None leaf, a bias that is never masked."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"l1": (jax.random.normal(k1, (6, 8), dtype), jnp.zeros(8, dtype)),
          "l2": [jax.random.normal(k2, (8, 4), dtype2 or dtype), None]}


def _loss(params, x):
  (w1, b1), (w2, _) = params["l1"], params["l2"]
  h = jnp.tanh(x @ w1.astype(jnp.float32) + b1.astype(jnp.float32))
  return jnp.mean((h @ w2.astype(jnp.float32) - 1.0) ** 2)


def _small_params():
  return {"w": jax.random.normal(jax.random.key(1), (6, 8)), "b": jnp.zeros(8)}


def _small_loss(params, x):
  return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - 0.5) ** 2)


def _make_step(tx, loss=_loss):
  def step(params, state, x):
    grads = jax.grad(loss)(params, x)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, grads
  return step


def _scan_run(tx, params, xs, loss=_loss):
  """Initial state and the stacked (params, state, grads) after each of ``len(xs)`` steps."""
  state = tx.init(params)

  def body(carry, x):
    params, state = carry
    params, state, grads = _make_step(tx, loss)(params, state, x)
    return (params, state), (params, state, grads)

  return state, jax.lax.scan(body, (params, state), xs)[1]


def _at(history, i):
  return jax.tree.map(lambda x: x[i], history)


def _mask_leaves(masks):
  """The masks of the masked leaves (the two kernels of ``_params``) as numpy arrays."""
  return [np.asarray(m) for m in jax.tree.leaves(masks)]


def _masked_params(params):
  """The params leaves that carry a mask (the two kernels), in flattening order."""
  return [np.asarray(params["l1"][0], np.float32), np.asarray(params["l2"][0], np.float32)]


def _is_update_step(count, every, begin=None, end=None):
  """The one meaning of begin/every/end in jaxprune.transforms; ``begin`` defaults to ``every``."""
  begin = every if begin is None else begin
  return count >= begin and (count - begin) % every == 0 and (end is None or count <= end)


# --- a numpy reference of one RigL mask update -------------------------------------------------

def _reference_rigl(p, old, g, fraction):
  """Drop the ``d`` smallest-|p| active entries, grow the ``d`` largest-|g| inactive ones."""
  flat_p, flat_m, flat_g = np.abs(p).ravel(), old.ravel(), np.abs(g).ravel()
  active = int(flat_m.sum())
  d = min(int(np.round(np.float32(fraction) * np.float32(active))), active, flat_m.size - active)
  active_idx = np.flatnonzero(flat_m)
  order = active_idx[np.lexsort((active_idx, flat_p[active_idx]))]  # ascending |p|, then index
  new = flat_m.copy()
  new[order[:d]] = False
  inactive_idx = np.flatnonzero(~flat_m)
  grow_order = inactive_idx[np.lexsort((inactive_idx, -flat_g[inactive_idx]))]
  new[grow_order[:d]] = True
  return new.reshape(old.shape)


def test_rigl_matches_numpy_reference():
  fraction = 0.3
  tx = rigl(optax.adam(1e-2), 0.5, every=1, drop_schedule="constant", drop_fraction=fraction,
            allocate="uniform", key=3)
  params = _params()
  xs = X + jnp.arange(4.0)[:, None, None]
  state, history = jax.jit(functools.partial(_scan_run, tx))(params, xs)
  changed = 0
  for i in range(4):
    before = _masked_params(params)
    old = _mask_leaves(state.masks)
    params, state, grads = _at(history, i)
    new = _mask_leaves(state.masks)
    for p, g, m0, m1 in zip(before, _masked_params(grads), old, new):
      expect = _reference_rigl(p, m0, g, fraction) if i > 0 else m0
      np.testing.assert_array_equal(m1, expect)
      changed += int((m0 != m1).sum())
  assert changed > 0


def test_rigl_grows_by_grads_extra_argument():
  """With ``grads=``, growth follows those gradients, not the incoming updates."""
  params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
  masks = {"w": jnp.arange(16).reshape(4, 4) < 8}  # first two rows active
  tx = rigl(optax.sgd(0.0), masks=masks, every=1, drop_schedule="constant", drop_fraction=0.25)
  state = tx.init(params)
  updates = {"w": jnp.arange(16.0).reshape(4, 4)}  # would grow entries 15, 14
  grads = {"w": -(15.0 - jnp.arange(16.0)).reshape(4, 4)}  # |g| largest first: grows 8, 9
  _, state = tx.update(updates, state, params, grads=grads)  # step 0: no mask update
  _, state = tx.update(updates, state, params, grads=grads)
  kept = np.flatnonzero(np.asarray(state.masks["w"]).ravel())
  np.testing.assert_array_equal(kept, [2, 3, 4, 5, 6, 7, 8, 9])  # dropped |p| = 1, 2
  _, state2 = tx.update(updates, tx.init(params)._replace(count=jnp.ones([], jnp.int32)),
                        params)
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(state2.masks["w"]).ravel()),
                                [2, 3, 4, 5, 6, 7, 14, 15])


# --- invariants over random data, for a few configurations (one compile each) ----------------

CONFIGS = {
    "rigl_erk_cosine": dict(kind="rigl", sparsity=0.6, every=1, allocate="erk", begin=2, end=5,
                            drop_schedule=None, drop_fraction=0.5),
    "set_uniform": dict(kind="set", sparsity=0.75, every=2, allocate="uniform", begin=0,
                        end=None, drop_schedule="constant", drop_fraction=0.4),
}


def _build(config, key):
  c = dict(config)
  make = rigl if c.pop("kind") == "rigl" else sparse_evolution
  return make(optax.adam(0.05), c.pop("sparsity"), key=key, **c)


@functools.lru_cache(maxsize=None)
def _jitted_run(name):
  """A jitted run (init inside jit, traced key) returning the stacked history."""
  return jax.jit(lambda params, key, xs: _scan_run(_build(CONFIGS[name], key), params, xs))


def _expected_counts(params, config):
  alloc = allocate.erk if config["allocate"] == "erk" else allocate.uniform
  sparsities = [s for s in jax.tree.leaves(alloc(params, config["sparsity"]))]
  return [keep_count(int(np.prod(p.shape)), s)
          for p, s in zip(jax.tree.leaves(_masked_params(params)), sparsities)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 10.0))
def test_invariants_after_every_update(name, seed, scale):
  config, steps = CONFIGS[name], 6
  params = jax.tree.map(lambda x: x * scale, _params(seed % 7))
  xs = jax.random.normal(jax.random.key(seed), (steps, 16, 6))
  state0, history = _jitted_run(name)(params, jax.random.key(seed), xs)
  history = [(params, state0, None)] + [_at(history, i) for i in range(steps)]
  counts = _expected_counts(params, config)
  n_updates = 0
  for i in range(1, steps + 1):
    prev_params, prev_state, _ = history[i - 1]
    new_params, state, _ = history[i]
    old, new = _mask_leaves(prev_state.masks), _mask_leaves(state.masks)
    assert int(state.count) == i
    update_step = _is_update_step(i - 1, config["every"], config["begin"], config["end"])
    inner = state.inner_state[0]
    moments = [_masked_params(inner.mu), _masked_params(inner.nu)]
    for j, (m0, m1, k) in enumerate(zip(old, new, counts)):
      assert m1.dtype == bool and int(m1.sum()) == k  # exact sparsity after every update
      w = _masked_params(new_params)[j]
      assert np.all(w[~m1] == 0)  # inactive (dropped included) exactly 0
      for moment in moments:  # the inner state of every inactive entry is exactly 0
        assert np.all(moment[j][~m1] == 0)
      if not update_step:
        np.testing.assert_array_equal(m0, m1)  # masks change on update steps only
        continue
      grown, dropped = m1 & ~m0, m0 & ~m1
      assert grown.sum() == dropped.sum()
      assert np.all(w[grown] == 0)  # grown weights start at exactly 0
      for moment in moments:
        assert np.all(moment[j][grown] == 0)  # and their Adam moments (mu and nu) are 0
      if config["drop_schedule"] == "constant":
        fraction = config["drop_fraction"]
      else:
        fraction = float(cosine_drop_fraction(config["drop_fraction"], config["end"])(i - 1))
      d = min(int(np.round(np.float32(fraction) * np.float32(k))), k, m0.size - k)
      assert int(grown.sum()) == d
      n_updates += 1
  assert n_updates > 0


# --- any inner optimizer: reset of regrown entries -----------------------------------------

# name: (inner optimizer, its per-parameter state trees, the value of a freshly reset entry)
OPTIMIZERS = {
    "adam": (lambda: optax.adam(1e-2), lambda s: [s[0].mu, s[0].nu], 0.0),
    "lion": (lambda: optax.lion(1e-3), lambda s: [s[0].mu], 0.0),
    "sgd_momentum": (lambda: optax.sgd(0.1, momentum=0.9), lambda s: [s[0].trace], 0.0),
    "chain_clip_adamw": (lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
                         lambda s: [s[1][0].mu, s[1][0].nu], 0.0),
    "multisteps": (lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
                   lambda s: [s.inner_opt_state[0].mu, s.inner_opt_state[0].nu, s.acc_grads],
                   0.0),
    "adagrad": (lambda: optax.adagrad(0.1, initial_accumulator_value=0.25),
                lambda s: [s[0].sum_of_squares], 0.25),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_any_inner_optimizer(name):
  make, per_param, fresh = OPTIMIZERS[name]
  tx = rigl(make(), 0.5, every=1, drop_schedule="constant", drop_fraction=0.5,
            allocate="uniform", key=1)
  params = _small_params()
  xs = X * jnp.arange(1.0, 7.0)[:, None, None]
  state, history = jax.jit(functools.partial(_scan_run, tx, loss=_small_loss))(params, xs)
  count = int(state.masks["w"].sum())
  ever_active = np.asarray(state.masks["w"])
  regrown_after_drop = 0
  for i in range(len(xs)):
    m0 = np.asarray(state.masks["w"])
    params, state, _ = _at(history, i)
    m1, w = np.asarray(state.masks["w"]), np.asarray(params["w"])
    assert int(m1.sum()) == count and np.all(w[~m1] == 0)
    grown = m1 & ~m0
    assert np.all(w[grown] == 0)
    regrown_after_drop += int((grown & ever_active).sum())
    ever_active = ever_active | m1
    for tree in per_param(state.inner_state):
      t = np.asarray(tree["w"])
      assert np.all(t[~m1] == fresh), "inner state of an inactive entry is not reset"
      assert np.all(t[grown] == fresh)
  assert regrown_after_drop > 0  # some entries were dropped then regrown: the reset mattered
  assert any(np.any(np.asarray(t) != fresh) for t in jax.tree.leaves(per_param(state.inner_state)))


# --- jit, dtypes, sharding, odd pytrees -------------------------------------------------------

def test_one_trace_and_low_precision():
  chex.clear_trace_counter()
  tx = sparse_evolution(optax.adam(1e-2, eps=1e-3), 0.5, every=2, end=8, allocate="uniform",
                        key=jax.random.key(5))  # eps=1e-8 underflows to 0 in float16
  params = _params(2, jnp.bfloat16, jnp.float16)
  state = tx.init(params)
  step = jax.jit(chex.assert_max_traces(_make_step(tx), n=1))
  counts = [int(m.sum()) for m in _mask_leaves(state.masks)]
  masks_seen = []
  for i in range(6):
    params, state, _ = step(params, state, X)
    masks_seen.append(_mask_leaves(state.masks))
    for w, m, k in zip(_masked_params(params), masks_seen[-1], counts):
      assert int(m.sum()) == k and np.all(w[~m] == 0)
  assert params["l1"][0].dtype == jnp.bfloat16 and params["l2"][0].dtype == jnp.float16
  assert any((a != b).any() for a, b in zip(masks_seen[0], masks_seen[-1]))
  assert isinstance(state, SparseTrainState) and state.count.dtype == jnp.int32


def test_sharded_params_keep_sharding(mesh):
  chex.clear_trace_counter()
  rows = NamedSharding(mesh, P("x", None))
  cols = NamedSharding(mesh, P(None, "x"))
  params = {"a": jax.device_put(jax.random.normal(jax.random.key(0), (16, 32)), rows),
            "b": jax.device_put(jnp.zeros(32), NamedSharding(mesh, P())),
            "c": jax.device_put(jax.random.normal(jax.random.key(1), (32, 8)), cols)}

  def loss(p, x):
    return jnp.sum(jnp.tanh(x @ p["a"] + p["b"]) @ p["c"])

  tx = rigl(optax.adamw(1e-2), 0.8, every=2, end=20, key=0)
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, state, x):
    updates, state = tx.update(jax.grad(loss)(p, x), state, p)
    return optax.apply_updates(p, updates), state

  counts = {k: int(m.sum()) for k, m in state.masks.items() if m is not None}
  for name, m in state.masks.items():
    if m is not None:
      assert m.sharding.is_equivalent_to(params[name].sharding, 2)
  first = state.masks
  for i in range(5):
    params, state = step(params, state, jnp.ones((4, 16)) * (i + 1))
  for name, m in state.masks.items():
    if m is None:
      continue
    assert m.sharding.is_equivalent_to(params[name].sharding, 2)
    assert params[name].sharding.is_equivalent_to(rows if name == "a" else cols, 2)
    assert int(m.sum()) == counts[name]
    assert np.all(np.asarray(params[name])[~np.asarray(m)] == 0)
  assert any((np.asarray(first[k]) != np.asarray(state.masks[k])).any() for k in counts)


def test_equinox_params_with_none_leaves():
  import equinox as eqx
  model = eqx.nn.MLP(6, 4, 8, 1, key=jax.random.key(0))
  params = eqx.filter(model, eqx.is_array)
  # static masks: the None leaves of equinox trees go through the same code as in RigL (the
  # odd pytree of _params, with a None leaf, covers mask updates)
  tx = static_sparse(optax.adam(1e-2), 0.5, allocate="uniform", key=0)
  state = tx.init(params)

  def loss(p, x):
    return jnp.mean(jax.vmap(eqx.combine(p, model))(x) ** 2)

  @jax.jit
  def step(p, state):
    updates, state = tx.update(jax.grad(loss)(p, X), state, p)
    return optax.apply_updates(p, updates), state

  for _ in range(3):
    params, state = step(params, state)
  mask_leaves = jax.tree.structure(params).flatten_up_to(state.masks)
  masked = [(w, m) for w, m in zip(jax.tree.leaves(params), mask_leaves) if m is not None]
  assert len(masked) == 2  # the two weight matrices; biases are dense
  for w, m in masked:
    assert int(m.sum()) == m.size - round(0.5 * m.size)
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
  assert jax.tree.structure(masks_of(state)) == jax.tree.structure(state.masks)


# --- static sparse training -----------------------------------------------------------------

def test_static_sparse_erk_fixed_masks():
  params = _params(3)
  tx = static_sparse(optax.sgd(0.1, momentum=0.9), 0.8, key=jax.random.key(2))
  state = tx.init(params)
  erk = allocate.erk(params, 0.8)
  expect = [keep_count(int(np.prod(p.shape)), s)
            for p, s in zip(_masked_params(params), jax.tree.leaves(erk))]
  first = _mask_leaves(state.masks)
  assert [int(m.sum()) for m in first] == expect
  step = jax.jit(_make_step(tx))
  for i in range(4):
    params, state, _ = step(params, state, X * (i + 1))
    for m0, m1, w, t in zip(first, _mask_leaves(state.masks), _masked_params(params),
                            _masked_params(state.inner_state[0].trace)):
      np.testing.assert_array_equal(m0, m1)
      assert np.all(w[~m1] == 0) and np.all(t[~m1] == 0)
      assert np.all(w[m1] != 0)
  assert state.key is None


def test_static_sparse_with_given_masks_and_key_determinism():
  params = _params(4)
  masks = jax.tree.map(lambda x: None, params)
  masks["l2"][0] = jnp.arange(32).reshape(8, 4) % 3 == 0
  tx = static_sparse(optax.adam(1e-2), masks=masks)
  state = tx.init(params)
  np.testing.assert_array_equal(np.asarray(state.masks["l2"][0]), np.asarray(masks["l2"][0]))
  assert state.masks["l1"][0] is None
  a = static_sparse(optax.adam(1e-2), 0.5, allocate="uniform", key=7).init(params)
  b = static_sparse(optax.adam(1e-2), 0.5, allocate="uniform", key=7).init(params)
  c = static_sparse(optax.adam(1e-2), 0.5, allocate="uniform", key=8).init(params)
  chex.assert_trees_all_equal(a.masks, b.masks)
  assert any((np.asarray(x) != np.asarray(y)).any()
             for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(c.masks)))


# --- schedules and errors ----------------------------------------------------------------------

def test_cosine_drop_fraction_matches_formula():
  schedule = cosine_drop_fraction(0.3, 1000)
  for t in [0, 1, 250, 500, 999, 1000, 5000]:
    expect = 0.3 * 0.5 * (1 + np.cos(np.pi * min(t, 1000) / 1000))
    np.testing.assert_allclose(float(schedule(t)), expect, atol=1e-6)


def test_bad_arguments_raise_clear_errors():
  params = _params()
  inner = optax.adam(1e-3)
  with pytest.raises(TypeError, match="key="):
    rigl(inner, 0.9, end=100)
  with pytest.raises(TypeError, match="key="):
    sparse_evolution(inner, 0.9, end=100)
  with pytest.raises(ValueError, match="exactly one of sparsity"):
    rigl(inner, 0.9, end=100, key=0, masks={"w": jnp.ones(2, bool)})
  with pytest.raises(ValueError, match="exactly one of sparsity"):
    rigl(inner, end=100, key=0)
  with pytest.raises(ValueError, match="end="):
    rigl(inner, 0.9, key=0)
  with pytest.raises(ValueError, match="every must be >= 1"):
    rigl(inner, 0.9, every=0, end=10, key=0)
  with pytest.raises(TypeError, match="every must be an int"):
    rigl(inner, 0.9, every=2.5, end=10, key=0)
  with pytest.raises(ValueError, match="drop_fraction"):
    rigl(inner, 0.9, end=10, drop_fraction=1.5, key=0)
  with pytest.raises(ValueError, match="allocate must be one of"):
    rigl(inner, 0.9, end=10, allocate="erdos", key=0)
  with pytest.raises(TypeError, match="key must be"):
    rigl(inner, 0.9, end=10, key="seed")
  with pytest.raises(TypeError, match="inner must be an optax"):
    rigl("adam", 0.9, end=10, key=0)
  with pytest.raises(ValueError, match="sparsity"):
    rigl(inner, 1.5, end=10, key=0).init(params)
  bad = jax.tree.map(lambda x: None, params)
  bad["l1"] = (jnp.ones((8, 6), bool), None)
  with pytest.raises(ValueError, match="l1/0.*shape"):
    static_sparse(inner, masks=bad).init(params)
  tx = rigl(inner, 0.5, end=10, key=0)
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, state)
  grads = jax.tree.map(lambda x: x, params)
  grads["l2"][0] = jnp.ones((4, 8))
  with pytest.raises(ValueError, match="l2/0"):
    tx.update(grads, state, params)


def test_state_carries_sparsity_and_last_drop_fraction_for_logging():
  params = {"w": jax.random.normal(jax.random.key(0), (16, 8)), "v": jnp.ones((4, 5)),
            "b": jnp.zeros(8)}
  tx = rigl(optax.adam(1e-2), 0.7, every=2, end=8, allocate="uniform", key=0)
  state = tx.init(params)
  # Independent count: inactive entries over the masked leaves' entries.
  leaves = [m for m in jax.tree.leaves(state.masks) if m is not None]
  expected = sum(int((~m).sum()) for m in leaves) / sum(m.size for m in leaves)
  assert float(state.sparsity) == pytest.approx(expected, abs=1e-7)
  assert float(state.drop_fraction) == 0.0
  step = jax.jit(tx.update)
  seen = []
  for _ in range(10):
    grads = jax.tree.map(lambda x: jnp.cos(x) + 0.1, params)
    count = int(state.count)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
    seen.append((count, float(state.drop_fraction)))
    assert float(state.sparsity) == pytest.approx(expected, abs=1e-7)
  schedule = cosine_drop_fraction(0.3, 8)
  last = 0.0
  for count, dropped in seen:
    if 2 <= count <= 8 and count % 2 == 0:
      last = float(schedule(count))
    assert dropped == pytest.approx(last, abs=1e-7), (count, dropped, last)


def test_static_sparse_state_sparsity_is_exact_and_drop_fraction_zero():
  params = {"w": jnp.ones((10, 10)), "u": jnp.ones((3, 7))}
  state = static_sparse(optax.sgd(0.1), 0.9, allocate="uniform", key=1).init(params)
  kept = keep_count(100, 0.9) + keep_count(21, 0.9)
  assert float(state.sparsity) == pytest.approx(1 - kept / 121, abs=1e-7)
  assert float(state.drop_fraction) == 0.0
