"""jaxprune.prune: exact zeros and exact counts during training, inside jit, on any pytree."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxprune
from jaxprune import schedules
from jaxprune.transforms import PruneState, masked_params, masks_of, prune

IS_NONE = dict(is_leaf=lambda x: x is None)


def make_params(key=0, dtype=jnp.float32):
  """A small MLP as an odd pytree: a list of dicts, a tuple, a None leaf, biases."""
  k = jax.random.split(jax.random.key(key), 4)
  return {
      "layers": [
          {"kernel": jax.random.normal(k[0], (8, 32), dtype), "bias": jnp.zeros(32, dtype)},
          {"kernel": 0.3 * jax.random.normal(k[1], (32, 24), dtype), "bias": None},
      ],
      "head": (0.3 * jax.random.normal(k[2], (24, 4), dtype), jnp.zeros(4, dtype)),
  }


def forward(params, x):
  (l0, l1), (w, b) = params["layers"], params["head"]
  h = jnp.tanh(x @ l0["kernel"] + l0["bias"])
  h = jnp.tanh(h @ l1["kernel"])
  return h @ w + b


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean((forward(params, x).astype(jnp.float32) - y) ** 2)


def make_batch(key=1, n=64, dtype=jnp.float32):
  kx, ky = jax.random.split(jax.random.key(key))
  return jax.random.normal(kx, (n, 8), dtype), jax.random.normal(ky, (n, 4))


SIZES = [24 * 4, 8 * 32, 32 * 24]  # flattening order: head/0, layers/0/kernel, layers/1/kernel


def kernels(params):
  """The pruned (ndim >= 2) leaves of ``make_params()``-like trees, in flattening order."""
  return [params["head"][0], params["layers"][0]["kernel"], params["layers"][1]["kernel"]]


def kernel_paths(tree):
  """Leaves of ``tree`` (masks) that are arrays, as a list (None leaves dropped)."""
  return jax.tree.leaves(tree)


def pairs(masks, params):
  """(mask, param) for every masked leaf."""
  m_leaves = jax.tree.leaves(masks, **IS_NONE)
  p_leaves = jax.tree.leaves(params, **IS_NONE)
  return [(m, p) for m, p in zip(m_leaves, p_leaves) if m is not None]


def expected_kept(n, s):
  """n - round(s * n) for the float32 sparsity value s, rounded half to even in float64."""
  return n - int(round(float(np.float32(s)) * n))


def train(tx, params, batch, steps, extras=lambda g: {}):
  """Runs ``steps`` jitted training steps with lax.scan; records per-step mask statistics."""

  def step(carry, _):
    params, state = carry
    old = masks_of(state)
    grads = jax.grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params, **extras(grads))
    params = optax.apply_updates(params, updates)
    new = masks_of(state)
    stats = dict(
        kept=jnp.stack([jnp.sum(m, dtype=jnp.int32) for m, _ in pairs(new, params)]),
        leaked=jnp.stack([jnp.sum(~m & (p != 0), dtype=jnp.int32) for m, p in pairs(new, params)]),
        grown=jnp.stack([jnp.sum(n & ~o, dtype=jnp.int32) for n, o in
                         zip(kernel_paths(new), kernel_paths(old))]),
        changed=jnp.any(jnp.stack([jnp.any(n != o) for n, o in
                                   zip(kernel_paths(new), kernel_paths(old))])),
    )
    return (params, state), stats

  @jax.jit
  def run(params, state):
    return jax.lax.scan(step, (params, state), None, length=steps)

  (params, state), stats = run(params, tx.init(params))
  return params, state, jax.device_get(stats)


def update_steps(begin, every, end, steps):
  return [t for t in range(steps) if t >= begin and (t - begin) % every == 0 and
          (end is None or t <= end)]


OPTIMIZERS = {
    "adamw": lambda: optax.adamw(3e-3, weight_decay=0.1),
    "sgd_momentum": lambda: optax.sgd(3e-2, momentum=0.9),
    "lion": lambda: optax.lion(1e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_1000_steps_exact_zeros_and_counts(name):
  params, batch = make_params(), make_batch()
  begin, end, every, steps = 100, 600, 50, 1000
  schedule = schedules.polynomial(0.9, begin, end)
  tx = optax.chain(optax.clip_by_global_norm(1.0), OPTIMIZERS[name](),
                   prune(sparsity=schedule, every=every, begin=begin, end=end))
  final, state, stats = train(tx, params, batch, steps)

  sizes = [m.size for m in kernel_paths(masks_of(state))]
  assert sizes == SIZES == [24 * 4, 8 * 32, 32 * 24]
  updates = update_steps(begin, every, end, steps)
  for t in range(steps):
    last = max([u for u in updates if u <= t], default=None)
    s = 0.0 if last is None else float(schedule(last))
    assert stats["kept"][t].tolist() == [expected_kept(n, s) for n in sizes], t
    assert stats["leaked"][t].tolist() == [0, 0, 0], t  # every pruned weight exactly 0
    assert stats["grown"][t].tolist() == [0, 0, 0], t  # masks only shrink
    if stats["changed"][t]:
      assert t in updates, t  # masks change on update steps only
  # Training went on for the kept weights and the loss went down.
  assert float(loss_fn(final, batch)) < float(loss_fn(params, batch))
  for m, p in pairs(masks_of(state), final):
    assert jnp.all(p[~m] == 0) and int(jnp.sum(p[m] != 0)) == int(m.sum())


def test_scores_only_on_update_steps():
  calls = []

  def counting_score(params):
    jax.debug.callback(lambda: calls.append(1))
    return jaxprune.scores.magnitude(params)

  params = make_params()
  tx = prune(counting_score, sparsity=0.5, every=5, begin=3, end=18, where="head/0")
  step = jax.jit(tx.update)
  state = tx.init(params)
  for _ in range(25):
    _, state = step(params, state, params)
  jax.effects_barrier()
  assert len(calls) == len(update_steps(3, 5, 18, 25)) == 4
  assert int(state.count) == 25


def test_scores_get_the_raw_gradients_from_extras():
  params, batch = make_params(), make_batch()
  grads = jax.grad(loss_fn)(params, batch)
  tx = optax.chain(optax.adam(1e-2), prune(jaxprune.scores.saliency, sparsity=0.75, every=1))
  state = tx.init(params)
  _, state = jax.jit(tx.update)(grads, state, params, grads=grads, batch=batch)
  # Independent reference: sort |w * g| per leaf, keep the largest n - round(0.75 n).
  for m, (w, g) in zip(kernel_paths(masks_of(state)),
                       zip(kernels(params), kernels(grads))):
    s = np.abs(np.asarray(w, np.float64) * np.asarray(g, np.float64)).ravel()
    keep = np.zeros(s.size, bool)
    keep[np.argsort(-s, kind="stable")[:expected_kept(s.size, 0.75)]] = True
    np.testing.assert_array_equal(np.asarray(m).ravel(), keep)


def test_extras_are_filtered_by_the_score_signature():
  seen = {}

  def score(params, grads, scale=1.0):
    seen["keys"] = "called"
    return jax.tree.map(lambda w, g: scale * jnp.abs(g), params, grads)

  params = make_params()
  grads = jax.tree.map(jnp.ones_like, params)
  tx = prune(score, sparsity=0.5, every=1, where="head/0")
  # batch= and key= are not accepted by this score: they are not passed to it.
  tx.update(grads, tx.init(params), params, grads=grads, batch=make_batch(),
            key=jax.random.key(0))
  assert seen["keys"] == "called"

  received = {}

  def takes_all(params, **kwargs):
    received.update(kwargs)
    return jaxprune.scores.magnitude(params)

  tx = prune(takes_all, sparsity=0.5, where="head/0")
  tx.update(grads, tx.init(params), params, grads=grads, key=jax.random.key(0))
  assert sorted(received) == ["grads", "key"]


def test_missing_score_argument_is_a_clear_error():
  params = make_params()
  tx = optax.chain(optax.sgd(0.1), prune(jaxprune.scores.saliency, sparsity=0.5))
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"needs the argument\(s\) \['grads'\].*grads=grads"):
    tx.update(params, state, params, batch=1)


def test_random_score_takes_a_key_extra():
  params = make_params()
  tx = prune(jaxprune.scores.random, sparsity=0.5, every=1, where="layers/1")
  state = tx.init(params)
  step = jax.jit(tx.update)
  _, s1 = step(params, state, params, key=jax.random.key(1))
  _, s2 = step(params, state, params, key=jax.random.key(2))
  (m1,), (m2,) = kernel_paths(masks_of(s1)), kernel_paths(masks_of(s2))
  assert bool(jnp.any(m1 != m2))
  assert int(m1.sum()) == int(m2.sum()) == 384


def shapes_and_dtypes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


def test_state_round_trips_through_eval_shape_and_jit():
  params, batch = make_params(), make_batch()
  tx = optax.chain(optax.adamw(1e-3), prune(sparsity=schedules.polynomial(0.8, 0, 10), every=2,
                                             where="layers/1"))
  eager = tx.init(params)
  abstract = jax.eval_shape(tx.init, params)
  jitted = jax.jit(tx.init)(params)
  grads = jax.grad(loss_fn)(params, batch)
  _, after_eager = tx.update(grads, eager, params)
  _, after_jit = jax.jit(tx.update)(grads, eager, params)
  _, after_abstract = jax.eval_shape(tx.update, grads, abstract, params)
  reference = shapes_and_dtypes(eager)
  for other in (abstract, jitted, after_eager, after_jit, after_abstract):
    assert jax.tree.structure(other) == jax.tree.structure(eager)
    assert shapes_and_dtypes(other) == reference
    assert type(other[-1]) is PruneState
  assert eager[-1].count.dtype == jnp.int32 and eager[-1].count.shape == ()
  assert all(m.dtype == jnp.bool_ for m in kernel_paths(eager[-1].masks))
  assert eager[-1].masks["layers"][0] == {"kernel": None, "bias": None}
  assert eager[-1].masks["head"] == (None, None)


def test_one_trace_across_update_and_other_steps():
  params, batch = make_params(), make_batch()
  tx = optax.chain(optax.sgd(0.05, momentum=0.9),
                   prune(sparsity=schedules.polynomial(0.7, 2, 12), every=2, begin=2, end=12,
                         where="kernel"))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    grads = jax.grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(20):
    params, state = step(params, state)
  assert int(state[-1].count) == 20
  assert [int(m.sum()) for m in kernel_paths(masks_of(state))] == [
      expected_kept(n, 0.7) for n in SIZES[1:]]


def test_sharded_training_keeps_the_params_sharding(mesh):
  params, batch = make_params(), make_batch()
  specs = {"layers": [{"kernel": P("x"), "bias": P()}, {"kernel": P(None, "x"), "bias": None}],
           "head": (P("x"), P())}
  params = jax.tree.map(lambda x, s: None if x is None else jax.device_put(
      x, NamedSharding(mesh, s)), params, specs, **IS_NONE)
  tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1),
                   prune(sparsity=schedules.polynomial(0.8, 0, 6), every=2, end=6))
  state = tx.init(params)
  for m, p in pairs(masks_of(state), params):
    assert m.sharding == p.sharding
  init_count_sharding = state[-1].count.sharding

  def train_step(params, state):
    grads = jax.grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(train_step).lower(params, state).compile()
  # The compiled step gathers no full parameter leaf onto one device.
  assert "all-gather" not in step.as_text()
  for _ in range(8):
    params, state = step(params, state)
    for m, p in pairs(masks_of(state), params):
      assert m.sharding == p.sharding, (m.sharding, p.sharding)
      assert int(jnp.sum(~m & (p != 0))) == 0
  assert state[-1].count.sharding == init_count_sharding
  assert [int(m.sum()) for m in kernel_paths(masks_of(state))] == [
      expected_kept(n, 0.8) for n in SIZES]


def test_multisteps():
  params, batch = make_params(), make_batch()
  inner = optax.chain(optax.sgd(0.05, momentum=0.9),
                      prune(sparsity=schedules.polynomial(0.6, 0, 4), every=2, end=4,
                            where="head/0"))
  tx = optax.MultiSteps(inner, every_k_schedule=3)
  step = jax.jit(lambda p, s: _apply(tx, p, s, batch))
  state = tx.init(params)
  for t in range(1, 16):
    params, state = step(params, state)
    count = int(state.inner_opt_state[-1].count)
    assert count == t // 3  # one inner step every 3 mini-steps
    last = max(u for u in (0, 2, 4) if u <= max(count - 1, 0)) if count else None
    s = 0.0 if last is None else float(schedules.polynomial(0.6, 0, 4)(last))
    masks = masks_of(state)
    assert [int(m.sum()) for m in kernel_paths(masks)] == [expected_kept(96, s)]
    for m, p in pairs(masks, params):
      assert int(jnp.sum(~m & (p != 0))) == 0


def _apply(tx, params, state, batch, **extras):
  grads = jax.grad(loss_fn)(params, batch)
  updates, state = tx.update(grads, state, params, **extras)
  return optax.apply_updates(params, updates), state


def test_inject_hyperparams_of_the_optimizer_and_of_prune():
  params, batch = make_params(), make_batch()
  adam = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, weight_decay=0.1)
  tx = optax.chain(adam, prune(sparsity=0.5, every=1, where="head/0"))
  state = tx.init(params)
  params1, state = jax.jit(lambda p, s: _apply(tx, p, s, batch))(params, state)
  for m, p in pairs(masks_of(state), params1):
    assert int(jnp.sum(~m & (p != 0))) == 0 and int(m.sum()) == expected_kept(m.size, 0.5)

  # The sparsity itself as an injected hyperparameter: changing it changes the next masks.
  tx = optax.chain(optax.sgd(0.01), optax.inject_hyperparams(prune, static_args="where")(
      sparsity=0.25, every=1, where="head/0|layers/0/kernel"))
  state = tx.init(params)
  step = jax.jit(lambda p, s: _apply(tx, p, s, batch))
  params, state = step(params, state)
  assert [int(m.sum()) for m in kernel_paths(masks_of(state))] == [72, 192]
  state[-1].hyperparams["sparsity"] = jnp.float32(0.75)
  params, state = step(params, state)
  assert [int(m.sum()) for m in kernel_paths(masks_of(state))] == [24, 64]
  for m, p in pairs(masks_of(state), params):
    assert int(jnp.sum(~m & (p != 0))) == 0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(dtype):
  params, batch = make_params(dtype=dtype), make_batch(dtype=dtype)
  where = "layers/1"
  # eps well above the float16 subnormals: Adam's default 1e-8 flushes to 0 in float16.
  tx = optax.chain(optax.adamw(1e-2, eps=1e-3, weight_decay=0.1),
                   prune(sparsity=schedules.polynomial(0.9, 0, 20), every=5, end=20,
                         where=where))
  final, state, stats = train(tx, params, batch, 25)
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(final))
  assert np.all(stats["leaked"] == 0) and np.all(stats["grown"] == 0)
  assert stats["kept"][-1].tolist() == [expected_kept(SIZES[2], 0.9)]
  assert all(p.dtype == dtype for p in jax.tree.leaves(final))


def test_mixed_precision_updates_still_give_exact_zeros():
  # float32 params with bfloat16 updates: -params must not be rounded to bfloat16.
  params = {"w": jnp.array([[1.0001, 3.3333, -7.77777, 0.1]], jnp.float32)}
  updates = {"w": jnp.full((1, 4), 0.5, jnp.bfloat16)}
  tx = prune(sparsity=0.5, every=1)
  out, _ = tx.update(updates, tx.init(params), params)
  new = optax.apply_updates(params, out)
  assert new["w"].tolist()[0][0] == 0.0 and new["w"].tolist()[0][3] == 0.0
  assert new["w"].dtype == jnp.float32


def test_flax_nnx_state_params():
  from flax import nnx
  model = nnx.Sequential(nnx.Linear(8, 16, rngs=nnx.Rngs(0)), nnx.Linear(16, 4, rngs=nnx.Rngs(1)))
  graphdef, state = nnx.split(model, nnx.Param)
  tx = optax.chain(optax.adam(1e-2), prune(sparsity=0.5, every=1))
  opt_state = tx.init(state)
  x, y = make_batch()

  def loss(state):
    return jnp.mean((nnx.merge(graphdef, state)(x) - y) ** 2)

  grads = jax.grad(loss)(state)
  updates, opt_state = jax.jit(tx.update)(grads, opt_state, state)
  new_state = optax.apply_updates(state, updates)
  masks = masks_of(opt_state)
  paths = jaxprune.core.flatten_with_paths(masks)[0]
  assert paths == ["layers/0/kernel", "layers/1/kernel"]
  for m, p in pairs(masks, new_state):
    assert int(m.sum()) == m.size // 2 and int(jnp.sum(~m & (p != 0))) == 0


def test_global_select_and_partial_select():
  params = make_params()
  n = 256 + 768 + 96
  for select in ("global", functools.partial(jaxprune.masks.global_topk, normalize="l1")):
    tx = prune(sparsity=0.9, select=select, every=1)
    _, state = tx.update(params, tx.init(params), params)
    assert sum(int(m.sum()) for m in kernel_paths(state.masks)) == expected_kept(n, 0.9)
  # global ranking of magnitudes: independent reference by sorting all kernels together.
  tx = prune(sparsity=0.9, select="global", every=1)
  _, state = tx.update(params, tx.init(params), params)
  flat = np.concatenate([np.abs(np.asarray(k)).ravel() for k in kernels(params)])
  threshold = np.sort(flat)[::-1][expected_kept(n, 0.9) - 1]
  got = np.concatenate([np.asarray(m).ravel() for m in kernel_paths(state.masks)])
  np.testing.assert_array_equal(got, flat >= threshold)


def test_allocate_scales_per_leaf_sparsity_with_the_schedule():
  params = make_params()
  alloc = jaxprune.allocate.erk(params, 0.8)
  per_leaf = [a for a in jax.tree.leaves(alloc)]
  schedule = schedules.polynomial(0.8, 0, 4, power=1)
  tx = prune(sparsity=schedule, allocate=jaxprune.allocate.erk, every=2, end=4)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(6):
    _, state = step(params, state, params)
    last = max(u for u in (0, 2, 4) if u <= t)
    ratio = np.float32(schedule(last)) / np.float32(0.8)
    want = [expected_kept(m.size, np.float32(a) * ratio)
            for m, a in zip(kernel_paths(state.masks), per_leaf)]
    assert [int(m.sum()) for m in kernel_paths(state.masks)] == want, t
  # At the end, each leaf has exactly its ERK sparsity.
  assert [int(m.sum()) for m in kernel_paths(state.masks)] == [
      m.size - round(a * m.size) for m, a in zip(kernel_paths(state.masks), per_leaf)]
  assert len(set(per_leaf)) > 1  # ERK really differs per leaf


def test_optax_schedule_as_sparsity():
  params = make_params()
  tx = prune(sparsity=optax.linear_schedule(0.0, 0.5, 10), every=5, end=10)
  state = tx.init(params)
  for _ in range(11):
    _, state = tx.update(params, state, params)
  assert [int(m.sum()) for m in kernel_paths(state.masks)] == [48, 128, 384]


def test_schedule_closing_over_a_traced_target_compiles_once_for_every_target():
  # optax.polynomial_schedule(0, target, ...) with target an argument of jax.jit: the schedule has
  # no value before run time, so prune must not sample it while building the transform.
  params = make_params()

  @jax.jit
  def final_masks(target):
    tx = prune(sparsity=optax.linear_schedule(0.0, target, 10), every=5, end=10)
    state = tx.init(params)
    for _ in range(11):
      _, state = tx.update(params, state, params)
    return state.masks

  for target, kept in [(0.5, [48, 128, 384]), (0.75, [24, 64, 192])]:
    masks = final_masks(jnp.float32(target))
    assert [int(m.sum()) for m in kernel_paths(masks)] == kept


def test_straight_through_trains_dense_weights_and_recomputes_masks():
  params, batch = make_params(), make_batch()
  tx = optax.chain(optax.sgd(0.1, momentum=0.9),
                   prune(sparsity=0.6, every=3, straight_through=True))

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: loss_fn(masked_params(p, state), batch))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  changed = False
  previous = None
  for t in range(12):
    before = params
    params, state = step(params, state)
    masks = masks_of(state)
    if t % 3 == 0:  # masks = top-k of the current dense magnitudes (no previous=)
      for m, w in zip(kernel_paths(masks), kernels(before)):
        a = np.abs(np.asarray(w)).ravel()
        keep = np.zeros(a.size, bool)
        keep[np.argsort(-a, kind="stable")[:expected_kept(a.size, 0.6)]] = True
        np.testing.assert_array_equal(np.asarray(m).ravel(), keep)
      if previous is not None:
        changed |= any(bool(jnp.any(n & ~o)) for n, o in zip(kernel_paths(masks), previous))
      previous = kernel_paths(masks)
  # Dense weights keep training: pruned entries are not zero; the forward view is.
  dense = pairs(masks_of(state), params)
  assert all(int(jnp.sum(~m & (p != 0))) > 0 for m, p in dense)
  view = masked_params(params, state)
  for (m, p), v in zip(dense, kernels(view)):
    assert jnp.array_equal(v, jnp.where(m, p, 0))
  reference = jaxprune.apply_masks(params, masks_of(state))
  assert jax.tree.structure(view) == jax.tree.structure(reference)
  for a, b in zip(jax.tree.leaves(view), jax.tree.leaves(reference)):
    assert jnp.array_equal(a, b)
  assert changed  # entries came back: what straight-through training allows


def test_masked_params_gradient_is_straight_through():
  params, batch = make_params(), make_batch()
  tx = prune(sparsity=0.5, every=1, straight_through=True, where="layers/1")
  _, state = tx.update(params, tx.init(params), params)
  g_ste = jax.grad(lambda p: loss_fn(masked_params(p, state), batch))(params)
  g_at_masked = jax.grad(loss_fn)(jaxprune.apply_masks(params, state.masks), batch)
  for a, b in zip(jax.tree.leaves(g_ste), jax.tree.leaves(g_at_masked)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  g_plain = jax.grad(lambda p: loss_fn(masked_params(p, state, straight_through=False),
                                       batch))(params)
  for m, g in pairs(state.masks, g_plain):
    assert jnp.all(g[~m] == 0)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**30), sparsity=st.floats(0, 1, allow_subnormal=False),
       shape=st.sampled_from([(4, 4), (3, 5), (2, 3, 4), (1, 7)]),
       opt=st.sampled_from(sorted(OPTIMIZERS)))
def test_one_update_zeroes_exactly_the_pruned_entries(seed, sparsity, shape, opt):
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = [jax.random.normal(k1, shape), (jnp.ones(shape[-1]), None)]
  grads = [jax.random.normal(k2, shape), (jnp.ones(shape[-1]), None)]
  tx = optax.chain(OPTIMIZERS[opt](), prune(sparsity=sparsity, every=1))
  updates, state = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  mask = masks_of(state)[0]
  n = int(np.prod(shape))
  assert int(mask.sum()) == n - round(sparsity * n)
  assert jnp.all(new[0][~mask] == 0)
  a = np.abs(np.asarray(params[0])).ravel()  # kept = the largest magnitudes
  if 0 < int(mask.sum()) < n:
    assert a[np.asarray(mask).ravel()].min() >= a[~np.asarray(mask).ravel()].max()
  assert masks_of(state)[1] == (None, None)


def test_masks_of_finds_nested_states():
  params = make_params()
  p1 = prune(sparsity=0.5)
  inner = optax.chain(optax.adam(1e-3), p1)
  nested = optax.MultiSteps(optax.inject_hyperparams(lambda learning_rate: optax.chain(
      optax.sgd(learning_rate), prune(sparsity=0.5)))(learning_rate=0.1), every_k_schedule=2)
  partitioned = optax.partition({"a": inner, "b": optax.sgd(0.1)},
                                jax.tree.map(lambda _: "a", params))
  masked = optax.masked(inner, jax.tree.map(lambda _: True, params))
  for tx in (inner, nested, partitioned, masked):
    masks = masks_of(tx.init(params))
    assert [m.shape for m in kernel_paths(masks)] == [(24, 4), (8, 32), (32, 24)]
  # Several: the last in flattening order wins.
  two = optax.chain(prune(sparsity=0.5, where="layers/0"), prune(sparsity=0.5, where="head/0"))
  assert jaxprune.core.flatten_with_paths(masks_of(two.init(params)))[0] == ["head/0"]
  with pytest.raises(ValueError, match="found no jaxprune state.*ScaleByAdamState"):
    masks_of(optax.adam(1e-3).init(params))


@pytest.mark.parametrize("kwargs,error,text", [
    (dict(), TypeError, "prune needs sparsity="),
    (dict(sparsity=1.5), ValueError, "[0, 1]"),
    (dict(sparsity="0.9"), TypeError, "float in [0, 1] or a schedule"),
    (dict(sparsity=True), TypeError, "bool"),
    (dict(sparsity=0.5, every=0), ValueError, "every must be >= 1"),
    (dict(sparsity=0.5, every=2.5), TypeError, "every must be an int"),
    (dict(sparsity=0.5, begin=10, end=5), ValueError, "end=5 is before begin=10"),
    (dict(sparsity=0.5, select="topk"), ValueError, "'global', 'layerwise'"),
    (dict(sparsity=0.5, select=3), TypeError, "select must be"),
    (dict(sparsity=0.5, select=lambda scores, sparsity: scores), TypeError, "where= and prev"),
    (dict(sparsity=0.5, score="magnitude"), TypeError, "score must be a callable"),
    (dict(sparsity=0.5, select="global", allocate=jaxprune.allocate.erk), ValueError,
     "select='layerwise'"),
    (dict(sparsity=optax.linear_schedule(0.0, 0.9, 10), allocate=jaxprune.allocate.erk),
     ValueError, "allocate= needs the final target"),
    (dict(sparsity=optax.linear_schedule(0.0, 90.0, 10), end=10), ValueError, "percentages"),
    (dict(sparsity=0.5, where=3), TypeError, "where= must be"),
    (dict(sparsity=0.5, straight_through="yes"), TypeError, "straight_through must be a bool"),
])
def test_construction_errors(kwargs, error, text):
  with pytest.raises(error) as info:
    prune(**kwargs)
  assert text in str(info.value)


def test_runtime_errors_name_what_is_wrong():
  params = make_params()
  tx = prune(sparsity=0.5)
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs the current params"):
    tx.update(params, state)
  other = {"layers": params["layers"], "head": (params["head"][0],)}
  with pytest.raises(ValueError, match="PruneState.masks must have the same tree structure"):
    tx.update(other, state, other)
  with pytest.raises(TypeError, match="expected the PruneState"):
    tx.update(params, (state,), params)
  with pytest.raises(ValueError, match="selected no leaf"):
    prune(sparsity=0.5, where="nothing_matches").init(params)
  with pytest.raises(TypeError, match=r"scores at 'w' have dtype int32"):
    prune(sparsity=0.5).init({"w": jnp.ones((4, 4), jnp.int32)})

  def wrong_leaves(scores, sparsity, where=None, previous=None):
    return jaxprune.masks.topk(scores, sparsity, where="head/0", previous=None)

  with pytest.raises(ValueError, match="select returned masks for other leaves"):
    prune(sparsity=0.5, select=wrong_leaves).init(params)


def test_state_reports_the_target_sparsity_for_logging():
  params = {"w": jnp.arange(1., 17.).reshape(4, 4)}
  tx = prune(sparsity=lambda t: jnp.minimum(0.25 * t, 0.75), every=2)
  state = tx.init(params)
  assert float(state.sparsity) == 0.0
  seen = []
  for _ in range(4):
    _, state = jax.jit(tx.update)(params, state, params)
    seen.append(float(state.sparsity))
  assert seen == [0.0, 0.0, 0.5, 0.5]  # updated on mask-update steps 0 and 2 only
