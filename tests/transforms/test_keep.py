"""jaxprune.keep_sparse: fixed masks keep pruned weights exactly 0 under any optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxprune
from jaxprune.transforms import KeepSparseState, keep_sparse, masks_of, prune

IS_NONE = dict(is_leaf=lambda x: x is None)


def make_params(dtype=jnp.float32):
  k = jax.random.split(jax.random.key(3), 3)
  return [
      {"kernel": jax.random.normal(k[0], (8, 16), dtype), "bias": jnp.zeros(16, dtype)},
      (0.3 * jax.random.normal(k[1], (16, 4), dtype), None),
  ]


def loss_fn(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params[0]["kernel"] + params[0]["bias"])
  return jnp.mean(((h @ params[1][0]).astype(jnp.float32) - y) ** 2)


def make_batch(dtype=jnp.float32):
  kx, ky = jax.random.split(jax.random.key(4))
  return jax.random.normal(kx, (32, 8), dtype), jax.random.normal(ky, (32, 4))


def random_masks(params, density=0.3, seed=5):
  """Masks with a Bernoulli pattern: True (kept) with probability ``density``."""
  keys = iter(jax.random.split(jax.random.key(seed), 8))
  return jax.tree.map(lambda x: jax.random.bernoulli(next(keys), density, x.shape)
                      if x.ndim >= 2 else None, params)


def kernels(tree):
  return [tree[0]["kernel"], tree[1][0]]


OPTIMIZERS = {
    "adamw": lambda: optax.adamw(3e-3, weight_decay=0.1),
    "sgd_momentum": lambda: optax.sgd(3e-2, momentum=0.9),
    "lion": lambda: optax.lion(1e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_1000_steps_keep_pruned_weights_exactly_zero(name):
  params, batch = make_params(), make_batch()
  masks = random_masks(params)
  tx = optax.chain(optax.clip_by_global_norm(1.0), OPTIMIZERS[name](), keep_sparse(masks))

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss_fn)(params, batch), state, params)
    params = optax.apply_updates(params, updates)
    m = masks_of(state)
    leaked = jnp.stack([jnp.sum(~mk & (p != 0)) for mk, p in zip(kernels(m), kernels(params))])
    return (params, state), leaked

  (final, state), leaked = jax.jit(
      lambda p, s: jax.lax.scan(step, (p, s), None, length=1000))(params, tx.init(params))
  assert np.all(np.asarray(leaked) == 0)  # from the very first update on
  for mk, now in zip(kernels(masks), kernels(masks_of(state))):
    assert jnp.array_equal(mk, now)  # the masks never change
  for mk, p0, p in zip(kernels(masks), kernels(params), kernels(final)):
    assert int(jnp.sum(p0[~mk] != 0)) > 0  # the weights were not zero before
    assert jnp.all(p[~mk] == 0)
    assert int(jnp.sum(p[mk] != p0[mk])) == int(mk.sum())  # kept weights trained
  assert float(loss_fn(final, batch)) < float(loss_fn(params, batch))


def test_matches_masked_reference_training():
  # Fine-tuning a pruned model with plain SGD, against the same steps written by hand:
  # a gradient step, then the masks applied again.
  params, batch = make_params(), make_batch()
  masks = random_masks(params)
  tx = optax.chain(optax.sgd(0.1), keep_sparse(masks))
  p = reference = jaxprune.apply_masks(params, masks)
  state = tx.init(p)
  for _ in range(5):
    updates, state = tx.update(jax.grad(loss_fn)(p, batch), state, p)
    p = optax.apply_updates(p, updates)
    g = jax.grad(loss_fn)(reference, batch)
    reference = jaxprune.apply_masks(jax.tree.map(lambda w, d: w - 0.1 * d, reference, g), masks)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_state_eval_shape_jit_and_masks_of():
  params = make_params()
  masks = random_masks(params)
  tx = optax.chain(optax.adam(1e-3), keep_sparse(masks))
  eager = tx.init(params)
  abstract = jax.eval_shape(tx.init, params)
  jitted = jax.jit(tx.init)(params)
  _, after = jax.jit(tx.update)(params, eager, params)
  spec = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  for other in (abstract, jitted, after):
    assert jax.tree.structure(other) == jax.tree.structure(eager)
    assert spec(other) == spec(eager)
  assert type(eager[-1]) is KeepSparseState
  found = masks_of(eager)
  assert jnp.array_equal(found[1][0], masks[1][0]) and found[1][1] is None
  assert jnp.array_equal(found[0]["kernel"], masks[0]["kernel"]) and found[0]["bias"] is None


def test_fine_tuning_after_prune():
  params, batch = make_params(), make_batch()
  pruner = optax.chain(optax.adam(1e-2), prune(sparsity=0.75, every=1))
  state = pruner.init(params)
  updates, state = pruner.update(jax.grad(loss_fn)(params, batch), state, params)
  params = optax.apply_updates(params, updates)
  tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), keep_sparse(masks_of(state)))
  fine_state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss_fn)(p, batch), s, p))
  for _ in range(20):
    updates, fine_state = step(params, fine_state)
    params = optax.apply_updates(params, updates)
  assert float(jaxprune.summary.sparsity(params)["total"]) == 0.75


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision(dtype):
  params = make_params(dtype)
  masks = random_masks(params)
  tx = optax.chain(optax.adamw(1e-2, eps=1e-3, weight_decay=0.1), keep_sparse(masks))
  state = tx.init(params)
  batch = make_batch(dtype)
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss_fn)(p, batch), s, p))
  for _ in range(3):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  assert params[0]["kernel"].dtype == dtype
  assert jnp.all(params[0]["kernel"][~masks[0]["kernel"]] == 0)
  assert jnp.all(params[1][0][~masks[1][0]] == 0)


def test_sharded_masks_follow_the_params(mesh):
  params = make_params()
  params = [
      {"kernel": jax.device_put(params[0]["kernel"], NamedSharding(mesh, P("x"))),
       "bias": jax.device_put(params[0]["bias"], NamedSharding(mesh, P()))},
      (jax.device_put(params[1][0], NamedSharding(mesh, P(None, None))), None),
  ]
  masks = jax.device_get(random_masks(params))  # host numpy masks: placed by init
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), keep_sparse(masks))
  state = tx.init(params)
  assert masks_of(state)[0]["kernel"].sharding == params[0]["kernel"].sharding
  assert masks_of(state)[1][0].sharding == params[1][0].sharding
  batch = make_batch()
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss_fn)(p, batch), s, p))
  for _ in range(3):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    got = masks_of(state)
    for m, p in ((got[0]["kernel"], params[0]["kernel"]), (got[1][0], params[1][0])):
      assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
  assert got[0]["kernel"].sharding.spec == P("x")
  assert jnp.all(params[0]["kernel"][~masks[0]["kernel"]] == 0)


def test_validation_errors_name_the_path():
  params = make_params()
  masks = random_masks(params)
  # One mask rule everywhere (jaxprune.core.as_mask_leaf): a float mask means non-zero = kept.
  floats = keep_sparse([{"kernel": masks[0]["kernel"].astype(jnp.float32), "bias": None},
                        (None, None)])
  assert jnp.array_equal(floats.init(params).masks[0]["kernel"], masks[0]["kernel"])
  with pytest.raises(TypeError, match=r"masks at '0/kernel' must be a bool array"):
    keep_sparse([{"kernel": masks[0]["kernel"].astype(jnp.complex64), "bias": None},
                 (None, None)])
  with pytest.raises(ValueError, match="every leaf is None"):
    keep_sparse([{"kernel": None, "bias": None}, (None, None)])
  with pytest.raises(ValueError, match=r"masks at '1/0' has shape \(4, 16\).*\(16, 4\)"):
    keep_sparse([masks[0], (masks[1][0].T, None)]).init(params)
  with pytest.raises(ValueError, match="Paths in params but not in masks"):
    keep_sparse([masks[0]]).init(params)
  with pytest.raises(TypeError, match=r"masks at '0/bias' is a mask but params there are not"):
    keep_sparse([{"kernel": masks[0]["kernel"], "bias": jnp.ones((), bool)}, masks[1]]).init(
        [{"kernel": params[0]["kernel"], "bias": 0.5}, params[1]])
  tx = keep_sparse(masks)
  state = tx.init(params)
  with pytest.raises(ValueError, match="needs the current params"):
    tx.update(params, state)
  wrong = [params[0], (params[1][0][:8], None)]
  with pytest.raises(ValueError, match=r"masks at '1/0' has shape \(16, 4\)"):
    tx.update(wrong, state, wrong)


def test_mixed_precision_updates():
  params = {"w": jnp.array([[1.0001, -3.3333, 7.77777]], jnp.float32)}
  masks = {"w": jnp.array([[False, True, False]])}
  tx = keep_sparse(masks)
  updates, _ = tx.update({"w": jnp.full((1, 3), 0.25, jnp.bfloat16)}, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert new["w"].tolist() == [[0.0, float(jnp.float32(-3.3333) + 0.25), 0.0]]
