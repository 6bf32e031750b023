"""Second-order, pruning-at-init and activation-aware scores against independent references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune import apply_masks, masks, scores, transforms
from jaxprune.scores import ModelLoss


def _params(key=jax.random.key(0), dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"l1": {"kernel": jax.random.normal(k1, (4, 5), dtype), "bias": 0.1 * jax.random.normal(
      k3, (5,), dtype)}, "l2": {"kernel": jax.random.normal(k2, (5, 3), dtype)}}


def _apply(p, x):
  h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
  return h @ p["l2"]["kernel"]


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


MODEL = ModelLoss(_apply, _xent)
X = jax.random.normal(jax.random.key(1), (8, 4))
Y = jnp.arange(8) % 3


def _dense(params):
  """(flat params, unravel, Hessian, gradient, GGN) of MODEL on (X, Y)."""
  flat, unravel = ravel_pytree(params)
  loss = lambda f: MODEL(unravel(f), X, Y)
  hess = jax.jit(jax.hessian(loss))(flat)
  grad = jax.grad(loss)(flat)
  out = _apply(params, X)
  jac = jax.jit(jax.jacobian(lambda f: _apply(unravel(f), X).reshape(-1)))(flat)
  h_out = jax.hessian(lambda o: _xent(o.reshape(out.shape), Y))(out.reshape(-1))
  return flat, unravel, hess, grad, jac.T @ h_out @ jac


def _flat(tree):
  return ravel_pytree(tree)[0]


def test_obd_is_half_diag_times_w_squared():
  params = _params()
  flat, _, hess, _, ggn = _dense(params)
  got = jax.jit(lambda p: scores.obd(MODEL, p, X, Y, method="exact"))(params)
  np.testing.assert_allclose(_flat(got), 0.5 * jnp.diag(hess) * flat**2, rtol=2e-5, atol=1e-7)
  got = jax.jit(lambda p: scores.obd(MODEL, p, X, Y, method="fisher"))(params)
  np.testing.assert_allclose(_flat(got), 0.5 * jnp.diag(ggn) * flat**2, rtol=2e-5, atol=1e-7)


def test_taylor2_matches_dense_reference():
  params = _params(jax.random.key(2))
  flat, _, hess, grad, ggn = _dense(params)
  got = jax.jit(lambda p: scores.taylor2(MODEL, p, X, Y))(params)
  ref = jnp.abs(-grad * flat + 0.5 * flat * (hess @ flat))
  np.testing.assert_allclose(_flat(got), ref, rtol=2e-5, atol=1e-6)
  got = jax.jit(lambda p: scores.taylor2(MODEL, p, X, Y, method="ggn"))(params)
  ref = jnp.abs(-grad * flat + 0.5 * flat * (ggn @ flat))
  np.testing.assert_allclose(_flat(got), ref, rtol=2e-5, atol=1e-6)


def test_grasp_matches_reference_and_removes_the_papers_highest_scores():
  params = _params(jax.random.key(3))
  flat, unravel, hess, grad, _ = _dense(params)
  formula = jax.jit(lambda p: scores.grasp(MODEL, p, X, Y))(params)  # -w * Hg, as DESIGN.md
  np.testing.assert_allclose(_flat(formula), -flat * (hess @ grad), rtol=2e-5, atol=1e-7)
  got = jax.jit(lambda p: scores.grasp(MODEL, p, X, Y, removal_order=True))(params)
  np.testing.assert_allclose(_flat(got), flat * (hess @ grad), rtol=2e-5, atol=1e-7)
  paper = -np.asarray(got["l1"]["kernel"]).reshape(-1)  # S = -w * Hg, highest removed
  kept = np.asarray(masks.topk(got, 0.25)["l1"]["kernel"]).reshape(-1)
  removed = np.argsort(-paper, kind="stable")[:5]  # round(0.25 * 20) = 5
  assert set(np.flatnonzero(~kept)) == set(removed)


def test_channel_trace_and_channel_obd_with_masks_channels():
  rng = np.random.default_rng(0)
  w, d = rng.normal(size=(3, 4, 6)).astype(np.float32), rng.random((3, 4, 6)).astype(np.float32)
  params, diag = {"conv": jnp.asarray(w), "b": jnp.ones(6)}, {"conv": jnp.asarray(d), "b": None}
  trace = scores.channel_trace(diag)
  np.testing.assert_allclose(trace["conv"], d.sum((0, 1)), rtol=1e-6)
  assert trace["b"] is None
  np.testing.assert_allclose(scores.channel_trace(diag, axis=(0, 2))["conv"], d.sum(1),
                             rtol=1e-6)
  entry = scores.channel_obd(params, diag)
  hap = 0.5 * d.sum((0, 1)) / 12 * (w**2).sum((0, 1))  # ½ Tr(H_c)/n_c ‖w_c‖²
  np.testing.assert_allclose(np.asarray(entry["conv"]).sum((0, 1)), hap, rtol=1e-5)
  kept = masks.channels(entry, 0.5, reduce="sum")["conv"][0, 0]
  assert set(np.flatnonzero(np.asarray(kept))) == set(np.argsort(-hap)[:3])


def _relu_net(p, x):
  h = jax.nn.relu(x @ p[0])
  h = jax.nn.relu(h @ p[1])
  return h @ p[2]


@functools.cache
def _synflow_jit(width):
  return jax.jit(lambda p: scores.synflow(_relu_net, p, (1, width)))


@settings(max_examples=8, deadline=None)
@given(widths=st.lists(st.sampled_from([1, 3, 6]), min_size=4, max_size=4),
       seed=st.integers(0, 1000))
def test_synflow_conserves_flow_per_layer(widths, seed):
  keys = jax.random.split(jax.random.key(seed), 3)
  params = [jax.random.normal(k, (a, b)) for k, a, b in zip(keys, widths[:-1], widths[1:])]
  got = _synflow_jit(widths[0])(params)
  # With |θ| and a ones input, R = 1ᵀ|W0||W1||W2|1 and every layer carries all of R.
  a = [jnp.abs(w) for w in params]
  total = jnp.ones(widths[0]) @ a[0] @ a[1] @ a[2] @ jnp.ones(widths[-1])
  for s in got:
    assert bool(jnp.all(s >= 0))
    np.testing.assert_allclose(jnp.sum(s), total, rtol=1e-5)
  # Entry (i, j) of the middle layer: paths through it, times |w_ij|.
  before = jnp.ones(widths[0]) @ a[0]
  after = a[2] @ jnp.ones(widths[-1])
  np.testing.assert_allclose(got[1], before[:, None] * a[1] * after[None, :], rtol=1e-5)


def test_synflow_masks_exact_count_and_iteration():
  keys = jax.random.split(jax.random.key(4), 3)
  params = {"l": [jax.random.normal(k, s) for k, s in zip(keys, [(6, 8), (8, 8), (8, 2)])],
            "bias": jnp.ones(2)}
  apply = lambda p, x: _relu_net(p["l"], x) + p["bias"]
  m = jax.jit(lambda p: transforms.synflow_masks(apply, p, (1, 6), 0.8, iterations=20))(params)
  assert m["bias"] is None
  assert sum(int(v.sum()) for v in m["l"]) == 128 - round(0.8 * 128)
  one, ref = jax.jit(lambda p: (transforms.synflow_masks(apply, p, (1, 6), 0.8, iterations=1),
                                masks.global_topk(scores.synflow(apply, p, (1, 6)), 0.8)))(params)
  for a, b in zip(one["l"], ref["l"]):
    np.testing.assert_array_equal(a, b)
  # Masked params score 0: the next round never revives pruned entries.
  again = scores.synflow(apply, params, (1, 6), masks=m)
  for s, k in zip(again["l"], m["l"]):
    assert bool(jnp.all(jnp.where(k, True, s == 0)))


def test_wanda_and_input_norms():
  params = _params(jax.random.key(5))
  x = jax.random.normal(jax.random.key(6), (2, 7, 4))  # batch and tokens
  norms = scores.input_norms(lambda p, x: _apply(p, x), params, x)
  h = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"])
  np.testing.assert_allclose(norms["l1"]["kernel"][:, 0], jnp.sqrt((x**2).sum((0, 1))),
                             rtol=1e-5)
  np.testing.assert_allclose(norms["l2"]["kernel"][:, 0], jnp.sqrt((h**2).sum((0, 1))),
                             rtol=1e-5)
  assert norms["l1"]["kernel"].shape == (4, 1) and norms["l1"]["bias"] is None
  got = scores.wanda(params, norms)
  np.testing.assert_allclose(got["l2"]["kernel"],
                             jnp.abs(params["l2"]["kernel"]) * norms["l2"]["kernel"], rtol=1e-6)
  one_d = scores.wanda(params, {"l1": {"kernel": norms["l1"]["kernel"][:, 0], "bias": None},
                                "l2": {"kernel": None}})
  np.testing.assert_allclose(one_d["l1"]["kernel"], got["l1"]["kernel"], rtol=1e-6)
  assert one_d["l2"]["kernel"] is None


def test_input_norms_through_jit_casts_and_transposed_kernels():
  k1, k2 = jax.random.split(jax.random.key(7))
  params = {"torch_style": jax.random.normal(k1, (5, 4), jnp.bfloat16),  # (out, in): x @ W.T
            "conv": jax.random.normal(k2, (3, 1, 5))}  # OIW

  def fn(p, x):
    h = jax.jit(lambda x, w: jax.nn.relu(x @ w.astype(jnp.float32).T))(x, p["torch_style"])
    return jax.lax.conv_general_dilated(h[:, None, :], p["conv"], (1,), "SAME")

  x = jax.random.normal(jax.random.key(8), (6, 4))
  norms = jax.jit(lambda p, x: scores.input_norms(fn, p, x))(params, x)
  assert norms["torch_style"].shape == (1, 4) and norms["conv"] is None
  np.testing.assert_allclose(norms["torch_style"][0], jnp.sqrt((x**2).sum(0)), rtol=1e-5)


def test_input_norms_of_reshaped_kernels_im2col_and_refused_splits():
  k1, k2, k3 = jax.random.split(jax.random.key(11), 3)
  params = {"conv": jax.random.normal(k1, (3, 2, 4)),  # (window, in, out) as an im2col matmul
            "heads": jax.random.normal(k2, (4, 2, 3)),  # (in, heads, head_dim) merged after
            "split": jax.random.normal(k3, (6, 2))}  # (in, out) with its input axis split

  def fn(p, x):  # x: (batch, length, in=2)
    patches = jnp.concatenate([x[:, i:i + 4] for i in range(3)], axis=-1)  # (b, 4, 3*2)
    h = patches @ p["conv"].reshape(6, 4)
    h = h @ p["heads"].reshape(4, 6)
    h = h.reshape(*h.shape[:2], 3, 2)
    return jnp.einsum("btij,ijo->bto", h, p["split"].reshape(3, 2, 2))

  x = jax.random.normal(jax.random.key(12), (5, 6, 2))
  norms = jax.jit(lambda p, x: scores.input_norms(fn, p, x))(params, x)
  patches = jnp.concatenate([x[:, i:i + 4] for i in range(3)], axis=-1)
  want = jnp.sqrt((patches**2).sum((0, 1))).reshape(3, 2, 1)  # (window, in) row-major
  assert norms["conv"].shape == (3, 2, 1)
  np.testing.assert_allclose(norms["conv"], want, rtol=1e-5)
  h = patches @ params["conv"].reshape(6, 4)
  assert norms["heads"].shape == (4, 1, 1)
  np.testing.assert_allclose(norms["heads"][:, 0, 0], jnp.sqrt((h**2).sum((0, 1))), rtol=1e-5)
  assert norms["split"] is None  # a split input axis is not followed (no norms, no guess)
  w = scores.wanda(params, norms)
  np.testing.assert_allclose(w["conv"], jnp.abs(params["conv"]) * want, rtol=1e-5)


def test_usable_as_prune_score_with_batch_and_key():
  from jaxprune import transforms  # noqa: PLC0415  (the training area, built alongside)
  params = _params(jax.random.key(9))
  score = lambda params, batch, key: scores.obd(MODEL, params, *batch, key=key, probes=4)
  tx = optax.chain(optax.sgd(0.01), transforms.prune(score=score, sparsity=0.5,
                                                              every=2))
  state = tx.init(params)

  @jax.jit
  def step(params, state, key):
    grads = jax.grad(MODEL)(params, X, Y)
    updates, state = tx.update(grads, state, params, batch=(X, Y), key=key)
    return optax.apply_updates(params, updates), state

  params, state = step(params, state, jax.random.key(0))
  m = transforms.masks_of(state)
  assert int(m["l1"]["kernel"].sum()) == 10 and int(m["l2"]["kernel"].sum()) == 15 - round(7.5)
  assert bool(jnp.all(jnp.where(m["l1"]["kernel"], True, params["l1"]["kernel"] == 0)))
  for fn in (lambda p, batch: scores.taylor2(MODEL, p, *batch),
             lambda p, batch: scores.grasp(MODEL, p, *batch)):
    out = jax.jit(lambda p, batch: fn(p, batch=batch))(params, (X, Y))
    assert out["l1"]["kernel"].shape == (4, 5)


def test_sharded_and_low_precision_params(mesh):
  k1, k2 = jax.random.split(jax.random.key(10))
  params = {"w1": jax.random.normal(k1, (8, 16)), "w2": jax.random.normal(k2, (16, 8))}
  model = ModelLoss(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"],
                    lambda o, t: jnp.mean((o - t) ** 2))
  x, t = jax.random.normal(jax.random.key(11), (16, 8)), jnp.ones((16, 8))
  sharded = {"w1": jax.device_put(params["w1"], NamedSharding(mesh, P(None, "x"))),
             "w2": jax.device_put(params["w2"], NamedSharding(mesh, P("x", None)))}
  both = jax.jit(lambda p: (scores.taylor2(model, p, x, t), scores.grasp(model, p, x, t),
                            scores.obd(model, p, x, t, method="fisher")))
  ref, out = both(params), both(sharded)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  low = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(both(low))):
    assert b.dtype == jnp.float32
    # bf16 has 8 bits of mantissa: compare rankings loosely, not values.
    assert np.corrcoef(np.ravel(a), np.ravel(b))[0, 1] > 0.9


def test_bad_inputs():
  params = _params()
  with pytest.raises(ValueError, match="method must be one of"):
    scores.taylor2(MODEL, params, X, Y, method="fisher")
  with pytest.raises(TypeError, match="ModelLoss"):
    scores.grasp(lambda p, x, y: MODEL(p, x, y), params, X, Y, method="ggn")
  with pytest.raises(ValueError, match="probes must be >= 1"):
    scores.obd(MODEL, params, X, Y, key=jax.random.key(0), probes=0)
  with pytest.raises(ValueError, match="must return a floating scalar"):
    scores.taylor2(lambda p, x, y: _apply(p, x), params, X, Y)
  with pytest.raises(ValueError, match=r"'l1/kernel' has 3 entries"):
    scores.wanda(params, {"l1": {"kernel": jnp.ones(3), "bias": None}, "l2": {"kernel": None}})
  with pytest.raises(ValueError, match="same tree structure"):
    scores.wanda(params, {"l1": None})
  with pytest.raises(TypeError, match="input_shape"):
    scores.synflow(_apply, params, (1, -4))
  with pytest.raises(ValueError, match=r"axis 3 is out of range.*'l1/kernel'"):
    scores.channel_trace(params, axis=3)
  with pytest.raises(ValueError, match=r"diag at 'l2/kernel'"):
    scores.channel_obd(params, {"l1": {"kernel": jnp.ones((4, 5)), "bias": None},
                                "l2": {"kernel": jnp.ones(3)}})


def test_flax_nnx_state_and_equinox_modules():
  import equinox as eqx  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from jaxprune.compensation import compensate  # noqa: PLC0415
  x = jax.random.normal(jax.random.key(12), (5, 3))
  norm = jnp.sqrt((x**2).sum(0))
  mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(13))
  arrays, static = eqx.partition(mlp, eqx.is_array)
  norms = scores.input_norms(lambda p, x: jax.vmap(eqx.combine(p, static))(x), arrays, x)
  np.testing.assert_allclose(norms.layers[0].weight[0], norm, rtol=1e-5)  # (out, in) kernel
  assert scores.wanda(arrays, norms).layers[0].weight.shape == (4, 3)

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1, self.l2 = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.l1(x)))

  graphdef, state = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
  apply = lambda s, x: nnx.merge(graphdef, s)(x)
  np.testing.assert_allclose(scores.input_norms(apply, state, x)["l1"]["kernel"][:, 0], norm,
                             rtol=1e-5)
  model = ModelLoss(apply, lambda o, t: jnp.mean((o - t) ** 2))
  t = jnp.ones((5, 2))
  plain = nnx.to_pure_dict(state)  # the same weights as nested dicts of arrays
  plain_model = ModelLoss(lambda p, x: apply(_with_values(state, p), x), model.output_loss)
  got = scores.obd(model, state, x, t, method="fisher")
  ref = scores.obd(plain_model, plain, x, t, method="fisher")
  np.testing.assert_allclose(got["l1"]["kernel"], ref["l1"]["kernel"], rtol=1e-5)
  m = masks.topk(scores.magnitude(state), 0.5)
  out = compensate(model, state, m, x, t)
  assert type(out) is type(state)
  # never worse than plain masking (compensate's guarantee; on this untrained toy net with the
  # relative default damping it falls back to plain masking)
  assert float(model(out, x, t)) <= float(model(apply_masks(state, m), x, t))


def _with_values(state, pure):
  from flax import nnx  # noqa: PLC0415
  new = jax.tree.map(lambda v: v, state)
  nnx.replace_by_pure_dict(new, pure)
  return new
