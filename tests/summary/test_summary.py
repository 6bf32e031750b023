"""jaxprune.summary: counts at any size, TensorBoard logging read back, plots without pyplot."""

import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import summary
from jaxprune.summary import _summary


def test_sparsity_of_more_than_2_31_entries_does_not_overflow():
  # 2 x 2^31 float32 entries: abstract (eval_shape), nothing is allocated.
  big = jax.ShapeDtypeStruct((2**16, 2**15), jnp.float32)
  tree = {"a": big, "b": big, "m": jax.ShapeDtypeStruct((2**31 + 8,), jnp.bool_)}
  out = jax.eval_shape(summary.sparsity, tree)
  assert set(out) == {"a", "b", "m", "total"}
  assert all(v.shape == () and v.dtype == jnp.float32 for v in out.values())
  assert jax.eval_shape(summary.count_zeros, big).dtype == jnp.float32


@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 3, 5), (2, 3, 2, 4)])
def test_count_zeros_in_pieces_is_exact(shape, monkeypatch):
  # Lower the int32 limit so the piecewise path runs on small arrays: same counts as numpy.
  rng = np.random.default_rng(sum(shape))
  x = np.where(rng.random(shape) < 0.4, 0.0, rng.normal(size=shape)).astype(np.float32)
  m = rng.random(shape) < 0.5
  for limit in (3, 5, 11, 2**31 - 1):
    monkeypatch.setattr(_summary, "_INT32_LIMIT", limit)
    assert float(summary.count_zeros(jnp.asarray(x))) == np.sum(x == 0)
    assert float(summary.count_zeros(jnp.asarray(m))) == np.sum(~m)
    tree = {"x": jnp.asarray(x.reshape(-1, shape[-1]) if x.ndim == 1 else x), "m": jnp.asarray(m)}
    got = jax.jit(summary.sparsity)(tree)
    zeros = np.sum(x == 0) + np.sum(~m)
    assert float(got["total"]) == pytest.approx(zeros / (x.size + m.size), rel=1e-6)
    assert float(got["m"]) == pytest.approx(np.mean(~m), rel=1e-6)


def test_sparsity_of_a_zero_size_leaf_is_zero_not_nan():
  out = summary.sparsity({"e": jnp.zeros((0, 3)), "w": jnp.zeros((2, 2))})
  assert float(out["e"]) == 0.0 and float(out["total"]) == 1.0


def test_scalars_keep_the_leaves_order():
  tree = {"z": jnp.zeros((2, 2)), "a": jnp.ones((2, 2))}
  assert list(summary.scalars(tree)) == ["sparsity/a", "sparsity/z", "sparsity/total"]


def _read_events(folder: pathlib.Path):
  """(tag, step, value) of every scalar in the TFRecord event files under ``folder``."""
  from tensorboardX.proto.event_pb2 import Event
  rows = []
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):  # record: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = Event.FromString(data[i + 12:i + 12 + length])
      i += 16 + length
      for value in event.summary.value:
        rows.append((value.tag, event.step, value.simple_value))
  return rows


def test_tensorboard_writer_round_trip(tmp_path):
  pytest.importorskip("tensorboardX")
  params = {"dense": {"kernel": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "bias": jnp.ones(2)}}
  with summary.tensorboard(tmp_path / "logs") as writer:
    first = summary.log(writer, 0, params, {"accuracy": 0.5})
    summary.log(writer, 10, extra={"accuracy": 0.75})
  assert first == {"sparsity/dense/kernel": 0.75, "sparsity/total": 0.75, "accuracy": 0.5}
  rows = _read_events(tmp_path / "logs")
  assert sorted(rows) == sorted([("sparsity/dense/kernel", 0, 0.75), ("sparsity/total", 0, 0.75),
                                 ("accuracy", 0, 0.5), ("accuracy", 10, 0.75)])


def test_log_to_clu_style_writer_and_bad_writer():
  written = []

  class Clu:
    def write_scalars(self, step, scalars):
      written.append((step, dict(scalars)))

  summary.log(Clu(), 4, {"w": jnp.zeros((1, 4))})
  assert written == [(4, {"sparsity/w": 1.0, "sparsity/total": 1.0})]
  with pytest.raises(TypeError, match="add_scalar.*write_scalars"):
    summary.log(object(), 0, extra={"a": 1.0})


def test_plots_leave_backend_and_pyplot_alone(tmp_path):
  matplotlib = pytest.importorskip("matplotlib")
  import matplotlib.pyplot as plt
  backend, figures = matplotlib.get_backend(), plt.get_fignums()
  fig = summary.plot({"w": jnp.zeros((2, 2)), "v": jnp.ones((2, 3))}, path=tmp_path / "a.png")
  curve = summary.plot_training([0, 5, 10], [0.0, 0.4, 0.8], {"test accuracy": [0.1, 0.5, 0.6]},
                                path=tmp_path / "b.png")
  assert matplotlib.get_backend() == backend and plt.get_fignums() == figures
  for name in ("a.png", "b.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["v", "w", "total"]
  np.testing.assert_allclose(curve.axes[0].get_lines()[0].get_ydata(), [0.0, 40.0, 80.0])
  with pytest.raises(ValueError, match="'accuracy' has 2 values but there are 3 steps"):
    summary.plot_training([0, 1, 2], [0.0, 0.1, 0.2], {"accuracy": [0.1, 0.2]})
