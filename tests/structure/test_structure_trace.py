"""structure.trace: groups found match hand-built expectations; unprunable dims have reasons."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import structure

import structure_models as sm


def _by_paths(graph):
  return {tuple(sorted((m.path, m.axis) for m in g.members)): g for g in graph}


def test_mlp_groups_and_reasons():
  g = structure.trace(sm.mlp, sm.mlp_params(), jnp.ones((2, 3)))
  groups = _by_paths(g)
  hidden = groups[(("b1", 0), ("w1", 1), ("w2", 0))]
  assert hidden.prunable and hidden.size == 8 and hidden.reason is None
  for m in hidden.members:
    np.testing.assert_array_equal(m.indices, np.arange(8)[:, None])
  assert "input" in groups[(("w1", 0),)].reason
  out = groups[(("b2", 0), ("w2", 1))]
  assert not out.prunable and "output" in out.reason
  assert len(g) == 3 and g.prunable == (hidden,)


def test_concat_offsets():
  g = structure.trace(sm.concat, sm.concat_params(), jnp.ones((2, 3)))
  groups = _by_paths(g)
  a = groups[(("a", 1), ("c", 0))]
  b = groups[(("b", 1), ("c", 0))]
  idx = lambda grp, path: next(m.indices for m in grp.members if m.path == path)  # noqa: E731
  np.testing.assert_array_equal(idx(a, "c"), np.arange(6)[:, None])
  np.testing.assert_array_equal(idx(b, "c"), np.arange(6, 10)[:, None])
  np.testing.assert_array_equal(idx(b, "b"), np.arange(4)[:, None])


def test_whole_heads_from_reshape():
  g = structure.trace(sm.heads, sm.heads_params(), jnp.ones((2, 5, 16)))
  assert len(g.prunable) == 1
  grp = g.prunable[0]
  assert grp.size == 4
  qkv = next(m for m in grp.members if m.path == "qkv")
  out = next(m for m in grp.members if m.path == "out")
  assert (qkv.axis, out.axis) == (1, 0)
  for h in range(4):  # head h: its 4 columns of q, of k (offset 16) and of v (offset 32)
    cols = np.arange(h * 4, h * 4 + 4)
    np.testing.assert_array_equal(qkv.indices[h], np.concatenate([cols, cols + 16, cols + 32]))
    np.testing.assert_array_equal(out.indices[h], cols)
  stream = g.find("out", 1)[0]
  assert not stream.prunable and g.find("qkv", 0) == (stream,)


def test_residual_cnn_one_group_for_all_writers():
  x = jnp.ones((2, 10, 3))
  v = jax.eval_shape(sm.ResCNN().init, jax.random.key(0), x)
  g = structure.trace(sm.ResCNN().apply, v, x)
  stream = g.find("params/stem/kernel", 2)[0]
  paths = set(stream.paths)
  for block in ("block0", "block1"):
    assert f"params/{block}/Conv_1/kernel" in paths  # the residual writer
    assert f"params/{block}/Conv_0/kernel" in paths  # reads the stream (input axis)
    assert f"batch_stats/{block}/BatchNorm_1/mean" in paths
  assert "params/pointwise/kernel" in paths and stream.prunable and stream.size == 8
  inner = g.find("params/block0/Conv_0/kernel", 2)[0]
  assert inner.prunable and set(inner.paths) >= {"params/block0/Conv_1/kernel",
                                                 "batch_stats/block0/BatchNorm_0/var"}
  dw = g.find("params/depthwise/kernel", 2)[0]  # depthwise: couples to the pointwise conv
  assert dw.prunable and "params/pointwise/kernel" in dw.paths
  head = next(m for m in dw.members if m.path == "params/head/kernel")
  np.testing.assert_array_equal(head.indices[1], np.arange(10) * 6 + 1)  # flatten (10, 6)
  assert "window" in g.find("params/stem/kernel", 0)[0].reason


def test_transformer_heads_and_layernorm_reason():
  x = jnp.ones((2, 5, 7))
  m = sm.Transformer()
  v = jax.eval_shape(m.init, jax.random.key(0), x)
  g = structure.trace(m.apply, v, x)
  stream = g.find("params/ln0/scale", 0)[0]
  assert not stream.prunable and "reduce_sum" in stream.reason
  heads = g.find("params/attn/query/kernel", 1)[0]
  assert heads.prunable and heads.size == 4
  assert {("params/attn/out/kernel", 0), ("params/attn/key/kernel", 1),
          ("params/attn/value/kernel", 1)} <= {(m.path, m.axis) for m in heads.members}
  qk = g.find("params/attn/query/kernel", 2)[0]
  assert not qk.prunable and "two activations" in qk.reason
  assert g.find("params/up/kernel", 1)[0].prunable


def test_unknown_primitive_and_reduction_reasons():
  p = sm.mlp_params()
  q = {"w1": p["w1"], "w2": p["w2"]}
  g = structure.trace(lambda p, x: jnp.sort(x @ p["w1"], -1) @ p["w2"], q, jnp.ones((1, 3)))
  assert "sort" in g.find("w1", 1)[0].reason
  g = structure.trace(lambda p, x: jnp.sum(x @ p["w1"], -1, keepdims=True) * p["w2"][0], q,
                      jnp.ones((1, 3)))
  assert "reduce_sum" in g.find("w1", 1)[0].reason


def test_print_table_and_scan():
  p = {"inp": sm.normal(0, 3, 8),
       "layers": {"up": sm.normal(1, 2, 8, 12), "down": sm.normal(2, 2, 12, 8)}}

  def f(p, x):
    h, _ = jax.lax.scan(lambda h, w: (h + jax.nn.relu(h @ w["up"]) @ w["down"], None),
                        x @ p["inp"], p["layers"])
    return h.sum(-1)
  g = structure.trace(f, p, jnp.ones((1, 3)))
  hidden = g.find("layers/up", 2)[0]
  assert hidden.prunable and set(hidden.paths) == {"layers/up", "layers/down"}
  assert "scan" in g.find("layers/up", 0)[0].reason
  text = str(g)
  assert "layers/up:2" in text and "prunable" in text.splitlines()[0]
  assert text.count("\n") == len(g)


@pytest.mark.parametrize("bad", ["untraceable", "unread", "not_callable", "leaf"])
def test_trace_errors(bad):
  p = sm.mlp_params()
  if bad == "untraceable":
    with pytest.raises(TypeError, match="could not trace"):
      structure.trace(lambda p, x: p["w1"] if x.sum() > 0 else p["w2"], p, jnp.ones((1, 3)))
  elif bad == "unread":
    with pytest.raises(ValueError, match="never reads.*'b2'"):
      structure.trace(lambda p, x: x @ p["w1"] @ p["w2"] + p["b1"].sum(), p, jnp.ones((1, 3)))
  elif bad == "not_callable":
    with pytest.raises(TypeError, match="callable"):
      structure.trace(p, p, jnp.ones((1, 3)))
  else:
    with pytest.raises(TypeError, match="'n'"):
      structure.trace(lambda p, x: x, {"n": "text"}, jnp.ones((1, 3)))
