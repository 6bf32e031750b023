"""structure.prune: the small model equals the dense model with the removed channels zeroed."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune
from jaxprune import structure

import structure_models as sm


def _close(a, b, tol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_mlp_matches_hand_zeroed_dense():
  p = sm.mlp_params()
  x = sm.normal(9, 4, 3)
  g = structure.trace(sm.mlp, p, x)
  keep = {g.find("w1", 1)[0].index: np.array([1, 4, 6])}
  small, small_fn = structure.prune(g, p, keep=keep)
  assert small["w1"].shape == (3, 3) and small["b1"].shape == (3,) and small["w2"].shape == (3, 2)
  _close(small["w1"], np.asarray(p["w1"])[:, [1, 4, 6]])
  gone = [0, 2, 3, 5, 7]  # independent reference: zero by hand with numpy
  z = {k: np.array(v) for k, v in p.items()}
  z["w1"][:, gone] = 0
  z["b1"][gone] = 0
  z["w2"][gone, :] = 0
  _close(jax.jit(small_fn)(small, x), sm.mlp(z, x))
  # sigmoid(0) = 0.5: the removed neurons' outgoing weights must be zero too
  assert not np.allclose(sm.mlp(p, x), sm.mlp(z, x))


def test_concat_matches_hand_zeroed_dense():
  p = sm.concat_params()
  x = sm.normal(3, 5, 3)
  g = structure.trace(sm.concat, p, x)
  ia, ib = g.find("a", 1)[0].index, g.find("b", 1)[0].index
  small, small_fn = structure.prune(g, p, keep={ia: [0, 5], ib: [1, 2, 3]})
  assert small["c"].shape == (5, 2)
  z = {k: np.array(v) for k, v in p.items()}
  z["a"][:, [1, 2, 3, 4]] = 0
  z["b"][:, [0]] = 0
  z["c"][[1, 2, 3, 4, 6]] = 0
  _close(jax.jit(small_fn)(small, x), sm.concat(z, x))
  _close(small["c"], np.asarray(p["c"])[[0, 5, 7, 8, 9]])


def test_heads_reshape_attention():
  p = sm.heads_params()
  x = sm.normal(4, 2, 5, 16)
  g = structure.trace(sm.heads, p, x)
  grp = g.prunable[0]
  small, small_fn = structure.prune(g, p, keep={grp.index: [0, 3]})
  assert small["qkv"].shape == (16, 24) and small["out"].shape == (8, 16)
  # reference: attention with only heads 0 and 3 (independent of jaxprune)
  z = {k: np.array(v) for k, v in p.items()}
  for h in (1, 2):
    for off in (0, 16, 32):
      z["qkv"][:, off + 4 * h: off + 4 * h + 4] = 0
    z["out"][4 * h: 4 * h + 4] = 0
  _close(jax.jit(small_fn)(small, x), sm.heads(z, x), 1e-4)


def test_residual_cnn_batchnorm_linen():
  x = sm.normal(5, 2, 10, 3)
  m = sm.ResCNN()
  v = sm.init(m, x)
  g = structure.trace(m.apply, v, x)
  keep, small, small_fn, dense = sm.zeroed_reference(g, v, jax.jit(m.apply), x)
  assert len(keep) == 4
  assert small["params"]["stem"]["kernel"].shape == (3, 3, 4)
  assert small["batch_stats"]["block0"]["BatchNorm_1"]["mean"].shape == (4,)
  assert small["params"]["head"]["kernel"].shape == (30, 3)
  _close(jax.jit(small_fn)(small, x), dense, 1e-4)


def test_transformer_linen_heads_and_mlp():
  x = sm.normal(6, 2, 5, 7)
  m = sm.Transformer()
  v = sm.init(m, x)
  g = structure.trace(m.apply, v, x)
  keep, small, small_fn, dense = sm.zeroed_reference(g, v, jax.jit(m.apply), x)
  attn = small["params"]["attn"]
  assert attn["query"]["kernel"].shape == (16, 2, 4) and attn["out"]["kernel"].shape[0] == 2
  assert small["params"]["up"]["kernel"].shape == (16, 32)
  _close(jax.jit(small_fn)(small, x), dense, 1e-4)


def test_equinox_mlp_module_and_apply():
  mlp = eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(0))
  fn, params = structure.from_module(mlp)
  x = sm.normal(1, 3)
  g = structure.trace(fn, params, x)
  keep, small, small_fn, dense = sm.zeroed_reference(g, params, jax.jit(fn), x)
  small_mlp = structure.to_module(mlp, small)
  assert small_mlp.layers[1].weight.shape == (4, 4)
  _close(jax.jit(small_fn)(small, x), dense)
  _close(eqx.filter_jit(lambda m, x: m(x))(small_mlp, x), dense)


def test_nnx_module_with_batchnorm():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(3, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
      self.l2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.bn(self.l1(x))))
  net = Net(nnx.Rngs(0))
  fn, params = structure.from_module(net)
  params = jax.tree.map(lambda a: a + sm.normal(2, *a.shape, scale=0.3) ** 2, params)
  x = sm.normal(3, 4, 3)
  g = structure.trace(fn, params, x)
  keep, small, small_fn, dense = sm.zeroed_reference(g, params, jax.jit(fn), x)
  assert small["bn"]["mean"].shape == (4,)
  _close(jax.jit(small_fn)(small, x), dense)
  _close(nnx.jit(lambda m, x: m(x))(structure.to_module(net, small), x), dense)


def test_scan_remat_custom_vjp():
  @jax.custom_vjp
  def act(x):
    return jnp.maximum(x, 0)
  act.defvjp(lambda x: (act(x), x), lambda x, g: (g * (x > 0),))

  def f(p, x):
    def layer(h, w):
      return h + jax.checkpoint(lambda h: act(h @ w["up"]) @ w["down"])(h), None
    h, _ = jax.lax.scan(layer, x @ p["inp"], p["layers"])
    return h @ p["head"]
  p = {"inp": sm.normal(0, 3, 8), "head": sm.normal(3, 8, 2),
       "layers": {"up": sm.normal(1, 2, 8, 12), "down": sm.normal(2, 2, 12, 8)}}
  x = sm.normal(4, 5, 3)
  g = structure.trace(f, p, x)
  keep, small, small_fn, dense = sm.zeroed_reference(g, p, jax.jit(f), x)
  assert small["layers"]["up"].shape == (2, 4, 6)
  _close(jax.jit(small_fn)(small, x), dense, 1e-4)


def test_export_jit_grad_new_batch_and_masks():
  p = sm.mlp_params()
  x = sm.normal(1, 4, 3)
  g = structure.trace(sm.mlp, p, x)
  small, small_fn = structure.prune(g, p, 0.5)
  exported = jax.export.export(jax.jit(small_fn))(small, x)
  assert [a.shape for a in exported.in_avals][:4] == [(4,), (2,), (3, 4), (4, 2)]
  try:
    exported = jax.export.deserialize(exported.serialize())
  except ImportError:  # serialization needs the optional `flatbuffers` package
    pass
  _close(exported.call(small, x), jax.jit(small_fn)(small, x))
  big = sm.normal(2, 9, 3)  # another batch size: re-traced once
  _close(jax.jit(small_fn)(small, big), sm.mlp(jaxprune.apply_masks(
      p, structure.masks(g, structure.select(g, p, 0.5))), big))
  grads = jax.grad(lambda q: jnp.sum(small_fn(q, x) ** 2))(small)
  assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, small)
  # unstructured pruning on top of the structured result: fine-tune with keep_sparse
  masks = jaxprune.masks.topk(jaxprune.scores.magnitude(small), 0.5)
  tx = optax.chain(optax.sgd(0.1), jaxprune.keep_sparse(masks))
  q = jaxprune.apply_masks(small, masks)
  updates, _ = tx.update(grads, tx.init(q), q)
  q = optax.apply_updates(q, updates)
  assert float(jaxprune.summary.sparsity(q)["w1"]) == 0.5


def test_bfloat16_params():
  p = jax.tree.map(lambda a: a.astype(jnp.bfloat16), sm.mlp_params())
  x = sm.normal(1, 4, 3).astype(jnp.bfloat16)
  g = structure.trace(sm.mlp, p, x)
  small, small_fn = structure.prune(g, p, 0.25)
  assert small["w1"].dtype == jnp.bfloat16 and small["w1"].shape == (3, 6)
  assert small_fn(small, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("bad", ["frozen", "all", "round_to", "both", "shape", "keep_all"])
def test_prune_errors(bad):
  p = sm.mlp_params()
  x = jnp.ones((1, 3))
  g = structure.trace(sm.mlp, p, x)
  hidden = g.find("w1", 1)[0].index
  out = g.find("w2", 1)[0].index
  if bad == "frozen":
    with pytest.raises(ValueError, match="not prunable.*output"):
      structure.prune(g, p, keep={out: [0]})
    with pytest.raises(ValueError, match=f"group {out}.*not prunable"):
      structure.prune(g, p, {out: 0.5})
  elif bad == "all":
    with pytest.raises(ValueError, match=f"every channel of group {hidden}.*w1"):
      structure.prune(g, p, 1.0)
  elif bad == "round_to":
    with pytest.raises(ValueError, match="round_to=16 is larger.*8 channels"):
      structure.prune(g, p, 0.5, round_to=16)
  elif bad == "both":
    with pytest.raises(ValueError, match="either sparsity"):
      structure.prune(g, p, 0.5, keep={hidden: [0]})
  elif bad == "shape":
    small, fn = structure.prune(g, p, 0.5)
    with pytest.raises(ValueError, match="small_params at 'b1'"):
      fn(p, x)
  else:
    with pytest.raises(ValueError, match="every channel"):
      structure.prune(g, p, keep={hidden: []})


def test_sharded_params(mesh):
  p = sm.mlp_params()
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "x"))
  p["w1"] = jax.device_put(p["w1"], sharding)
  x = sm.normal(1, 4, 3)
  g = structure.trace(sm.mlp, p, x)
  keep, small, small_fn, dense = sm.zeroed_reference(g, p, jax.jit(sm.mlp), x)
  assert small["w1"].shape == (3, 4)
  _close(jax.jit(small_fn)(small, x), dense)
