"""Sparsity summaries: per-leaf fractions (jit-able), text tables, logger scalars."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxprune import filters
from jaxprune.core import flatten_with_paths, is_array

# Counts are exact int32 sums while a reduction stays below this many entries; larger leaves are
# cut along their leading axes into pieces below it (module-level so a test can lower it).
_INT32_LIMIT = 2**31 - 1


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


def count_zeros(x) -> jax.Array:
  """The number of zeros (``False`` for bool leaves) in ``x``, for any size.

  An exact ``int32`` count while ``x`` has fewer than 2³¹ entries; beyond that a ``float32``
  sum of exact ``int32`` counts over pieces of ``x`` that each stay below 2³¹ entries, so no
  size overflows (relative error ~1e-7).

  >>> import jax.numpy as jnp
  >>> int(count_zeros(jnp.array([[0., 1.], [0., 0.]])))
  3
  """
  zero = ~x if x.dtype == jnp.bool_ else x == 0
  if x.size <= _INT32_LIMIT:
    return jnp.sum(zero, dtype=jnp.int32)
  inner = 0  # the smallest trailing block of axes that still fits in an int32 count
  while inner < x.ndim and math.prod(x.shape[x.ndim - inner - 1:]) <= _INT32_LIMIT:
    inner += 1
  if inner == 0:  # a single axis beyond int32: nothing exact to cut along
    return jnp.sum(zero, dtype=jnp.float32)
  axes = tuple(range(x.ndim - inner, x.ndim))
  return jnp.sum(jnp.sum(zero, axis=axes, dtype=jnp.int32), dtype=jnp.float32)


def sparsity(tree, where=None) -> dict:
  """Fraction of zeros per selected leaf and over all of them, as ``{path: x, "total": x}``.

  For bool leaves (masks) a zero is ``False``. Works under ``jax.jit`` (values are 0-d float32
  arrays) and for trees of any size: the total is a weighted mean of per-leaf fractions, so
  no integer count of 2³¹ entries or more is ever formed.

  Args:
    tree: params or masks.
    where: leaves to summarise (default: bool leaves and leaves with ``ndim >= 2``).

  >>> import jax.numpy as jnp
  >>> s = sparsity({"w": jnp.array([[0., 1.], [0., 0.]]), "b": jnp.ones(2)})
  >>> {k: float(v) for k, v in s.items()}
  {'w': 0.75, 'total': 0.75}
  """
  picked = _chosen(tree, where)
  total = sum(x.size for _, x in picked)
  out, overall = {}, jnp.float32(0.0)
  for p, x in picked:
    zeros = count_zeros(x).astype(jnp.float32)
    out[p] = zeros * (1.0 / x.size) if x.size else jnp.float32(0.0)
    if total:
      overall = overall + zeros * (1.0 / total)
  out["total"] = overall
  return out


def scalars(tree, where=None, prefix: str = "sparsity/") -> dict[str, float]:
  """A flat ``{name: float}`` dict for loggers (TensorBoard, wandb, CLU, ...), host values.

  >>> import jax.numpy as jnp
  >>> scalars({"dense": {"kernel": jnp.array([[0., 1.]])}})
  {'sparsity/dense/kernel': 0.5, 'sparsity/total': 0.5}
  """
  values = sparsity(tree, where)
  host = jax.device_get(values)  # a dict comes back sorted: keep the leaves' order
  return {prefix + k: float(host[k]) for k in values}


def table(tree, where=None) -> str:
  """A readable text table: path, shape, entries, zeros, sparsity per leaf, and the total.

  >>> import jax.numpy as jnp
  >>> print(table({"w": jnp.array([[0., 1.], [2., 0.]])}))
  path   shape   size  zeros  sparsity
  w      (2, 2)     4      2    50.00%
  total             4      2    50.00%
  """
  picked = _chosen(tree, where)
  zeros = jax.device_get([count_zeros(x) for _, x in picked])
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
