"""Matplotlib figures of sparsity: per layer, and over training steps.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never through
``pyplot``: the user's backend is left as it is and no figure stays registered (open) anywhere,
so nothing needs closing and notebooks or training scripts do not accumulate figures.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from jaxprune.summary._summary import scalars


def _figure(size):
  try:
    from matplotlib.figure import Figure
  except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("jaxprune.summary plots need matplotlib: pip install matplotlib") from err
  return Figure(figsize=size)


def plot(tree, where=None, path=None, title: str = "Sparsity per layer"):
  """A horizontal bar chart of per-leaf sparsity (needs matplotlib); saved when ``path`` given.

  Args:
    tree: params or masks.
    where: leaves to show (as in :func:`sparsity`).
    path: where to save the image (any format matplotlib writes, from the suffix), or None.
    title: the figure's title.

  Returns:
    A ``matplotlib.figure.Figure`` not registered with ``pyplot`` (show it in a notebook by
    leaving it as a cell's value, or save it); the matplotlib backend is not changed.

  >>> import jax.numpy as jnp
  >>> fig = plot({"w": jnp.array([[0., 1.]])})
  >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
  ['w', 'total']
  """
  values = scalars(tree, where, prefix="")
  names = list(values)
  fig = _figure((7, 0.35 * len(names) + 1.2))
  ax = fig.add_subplot()
  ax.barh(names, [100 * values[n] for n in names], color="tab:blue")
  ax.set_xlabel("sparsity (%)")
  ax.set_xlim(0, 100)
  ax.invert_yaxis()
  ax.set_title(title)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


def plot_training(steps: Sequence[int], sparsity: Sequence[float],
                  metrics: Mapping[str, Sequence[float]] | None = None, *, path=None,
                  title: str = "Sparsity and accuracy during training"):
  """Sparsity (left axis, %) and metrics such as accuracy (right axis) over training steps.

  Args:
    steps: the training steps at which the values were taken.
    sparsity: the fraction of zeros at each step (e.g. ``summary.sparsity(params)["total"]``).
    metrics: optional ``{name: values}`` drawn on the right axis, one value per step (e.g.
      ``{"test accuracy": [...]}``); fractions in [0, 1] are shown as percentages.
    path: where to save the image, or None.
    title: the figure's title.

  Returns:
    A ``matplotlib.figure.Figure`` (not registered with ``pyplot``; backend unchanged).

  >>> fig = plot_training([0, 10, 20], [0.0, 0.5, 0.9], {"accuracy": [0.1, 0.6, 0.7]})
  >>> [ax.get_ylabel() for ax in fig.axes]
  ['sparsity (%)', 'accuracy (%)']
  """
  steps = list(steps)
  metrics = dict(metrics or {})
  for name, values in {"sparsity": sparsity, **metrics}.items():
    if len(values) != len(steps):
      raise ValueError(f"plot_training: {name!r} has {len(values)} values but there are "
                       f"{len(steps)} steps; give one value per step.")
  fig = _figure((7, 4))
  ax = fig.add_subplot()
  ax.plot(steps, [100 * float(s) for s in sparsity], color="tab:blue", label="sparsity")
  ax.set_xlabel("step")
  ax.set_ylabel("sparsity (%)")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  if metrics:
    right = ax.twinx()
    for i, (name, values) in enumerate(metrics.items()):
      right.plot(steps, [100 * float(v) for v in values], color=f"C{i + 1}", label=name)
    right.set_ylabel(" / ".join(metrics) + " (%)")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="lower right", fontsize=8)
  ax.set_title(title)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig
