"""summary.sparsity, table and plot on small hand-checked trees."""

import jax
import jax.numpy as jnp
import pytest

import jaxprune
from jaxprune import summary


def test_summary_sparsity_and_table():
  tree = {"a": jnp.array([[0.0, 1.0], [0.0, 0.0]]), "b": jnp.zeros((2, 3)), "c": jnp.zeros(5)}
  values = jax.jit(summary.sparsity)(tree)
  assert {k: float(v) for k, v in values.items()} == pytest.approx({"a": 0.75, "b": 1.0, "total": 0.9})
  text = summary.table(tree)
  assert "a" in text and "90.00%" in text.splitlines()[-1]
  assert summary.scalars(tree, prefix="s/")["s/total"] == pytest.approx(0.9)


def test_summary_of_masks_counts_false_entries():
  m = jaxprune.masks.topk({"w": jnp.arange(10.0)}, 0.3, where=lambda p, x: True)
  assert float(summary.sparsity(m)["w"]) == pytest.approx(0.3)


def test_summary_plot_writes_png(tmp_path):
  fig = summary.plot({"w": jnp.zeros((2, 2))}, path=tmp_path / "s.png")
  assert (tmp_path / "s.png").stat().st_size > 0
  assert fig is not None
