"""Sparsity summaries: per-leaf fractions (jit-able), text tables, logger scalars, plots."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune import filters
from jaxprune.core import flatten_with_paths, is_array


def _default(path, leaf):
  return leaf.dtype == jnp.bool_ or filters.default(path, leaf)


def _chosen(tree, where):
  f = filters.Filter(_default, "bool leaves or ndim >= 2") if where is None else filters.resolve(
      where)
  paths, leaves, _ = flatten_with_paths(tree)
  picked = [(p, x) for p, x in zip(paths, leaves) if is_array(x) and f(p, x)]
  if not picked:
    raise ValueError(f"summary: where={f!r} selected no leaf; paths seen: {paths[:20]}.")
  return picked


def _zeros(x):
  if x.dtype == jnp.bool_:
    return jnp.sum(~x, dtype=jnp.float32)
  return jnp.sum(x == 0, dtype=jnp.float32)


def sparsity(tree, where=None) -> dict:
  """Fraction of zeros per selected leaf and over all of them, as ``{path: x, "total": x}``.

  For bool leaves (masks) a zero is ``False``. Works under ``jax.jit`` (values are 0-d arrays).

  Args:
    tree: params or masks.
    where: leaves to summarise (default: bool leaves and leaves with ``ndim >= 2``).

  >>> import jax.numpy as jnp
  >>> s = sparsity({"w": jnp.array([[0., 1.], [0., 0.]]), "b": jnp.ones(2)})
  >>> {k: float(v) for k, v in s.items()}
  {'w': 0.75, 'total': 0.75}
  """
  picked = _chosen(tree, where)
  zeros = {p: _zeros(x) for p, x in picked}
  out = {p: zeros[p] / max(x.size, 1) for p, x in picked}
  total = sum(max(x.size, 1) for _, x in picked)
  out["total"] = sum(zeros.values()) / total
  return out


def scalars(tree, where=None, prefix: str = "sparsity/") -> dict[str, float]:
  """A flat ``{name: float}`` dict for loggers (TensorBoard, wandb, CLU, ...), host values.

  >>> import jax.numpy as jnp
  >>> scalars({"dense": {"kernel": jnp.array([[0., 1.]])}})
  {'sparsity/dense/kernel': 0.5, 'sparsity/total': 0.5}
  """
  values = jax.device_get(sparsity(tree, where))
  return {prefix + k: float(v) for k, v in values.items()}


def table(tree, where=None) -> str:
  """A readable text table: path, shape, entries, zeros, sparsity per leaf, and the total.

  >>> import jax.numpy as jnp
  >>> print(table({"w": jnp.array([[0., 1.], [2., 0.]])}))
  path   shape   size  zeros  sparsity
  w      (2, 2)     4      2    50.00%
  total             4      2    50.00%
  """
  picked = _chosen(tree, where)
  zeros = jax.device_get([_zeros(x) for _, x in picked])
  rows = [(p, str(tuple(x.shape)), x.size, int(z)) for (p, x), z in zip(picked, zeros)]
  size, nz = sum(r[2] for r in rows), sum(r[3] for r in rows)
  rows.append(("total", "", size, nz))
  header = ("path", "shape", "size", "zeros", "sparsity")
  cells = [header] + [(p, s, str(n), str(z), f"{100.0 * z / max(n, 1):.2f}%")
                      for p, s, n, z in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(5)]
  lines = []
  for r in cells:
    left = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
    right = [r[i].rjust(widths[i]) for i in (2, 3, 4)]
    lines.append("  ".join(left + right).rstrip())
  return "\n".join(lines)


def plot(tree, where=None, path: str | None = None, title: str = "Sparsity per layer"):
  """A horizontal bar chart of per-leaf sparsity (needs matplotlib); saved when ``path`` given.

  Returns the matplotlib ``Figure``.
  """
  try:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
  except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("summary.plot needs matplotlib: pip install matplotlib") from err
  values = {k: float(v) for k, v in jax.device_get(sparsity(tree, where)).items()}
  names = list(values)
  fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
  ax.barh(names, [100 * values[n] for n in names], color="tab:blue")
  ax.set_xlabel("sparsity (%)")
  ax.set_xlim(0, 100)
  ax.invert_yaxis()
  ax.set_title(title)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=120)
  return fig


