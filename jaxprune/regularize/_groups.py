"""Groups for group lasso: an int axis, or the groups of ``jaxprune.structure`` (duck-typed).

Axis groups: ``axis=a`` makes every index ``i`` along axis ``a`` of a selected leaf one group,
the slice ``take(w, i, axis=a)`` (for a flax kernel ``(in, out)`` or a conv kernel
``(*window, in, out)``, ``axis=-1`` is one group per output channel / filter).

Structure groups: any object with ``.members`` (each with ``.path``, ``.axis`` and
``.indices``, an int array ``(size, k)``: channel ``i`` is the entries ``indices[i, :]`` along
``axis`` of the param at ``path``), ``.size`` and optionally ``.prunable``, e.g. the groups of
``jaxprune.structure.trace(...)``; a graph is anything with ``.groups``. The norm of channel
``i`` is taken jointly over every member's slice.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxprune.core import at_path, describe, is_array

F32 = jnp.float32


def parse(groups, name: str) -> tuple[str, Any]:
  """``("axis", int)`` or ``("graph", tuple of prunable groups)``; raises on anything else."""
  if isinstance(groups, (numbers.Integral, np.integer)) and not isinstance(groups, bool):
    return "axis", int(groups)
  seq = getattr(groups, "groups", groups)
  if isinstance(seq, (list, tuple)) and seq and all(hasattr(g, "members") for g in seq):
    for g in seq:
      if not hasattr(g, "size") or not all(
          hasattr(m, a) for m in g.members for a in ("path", "axis", "indices")):
        raise TypeError(f"{name}: group {g!r} must have .size and members with .path, .axis "
                        "and .indices (the contract of jaxprune.structure's Group/Member).")
    return "graph", tuple(g for g in seq if getattr(g, "prunable", True))
  raise TypeError(
      f"{name}: groups must be an int axis (e.g. groups=-1: one group per output channel), a "
      "jaxprune.structure graph or a non-empty sequence of its groups; got "
      f"{describe(groups)}.")


def norm_axis(axis: int, leaf, path: str, name: str) -> int:
  ndim = len(leaf.shape)
  if not -ndim <= axis < ndim:
    raise ValueError(f"{name}: groups axis {axis} is out of range for the leaf at "
                     f"{at_path(path)} of shape {tuple(leaf.shape)}. Pick an axis in "
                     f"[{-ndim}, {ndim}) or narrow where= to leaves that have it.")
  return axis % ndim


def check_graph(groups, by_path: dict, name: str):
  """Checks every member against the params (``{path: leaf}``); returns checked members."""
  out = []
  for g in groups:
    members = []
    for m in g.members:
      if m.path not in by_path:
        known = list(by_path)[:8]
        raise ValueError(f"{name}: a group member is at path {m.path!r} but the params have no "
                         f"array there (paths: {known}...). Trace the graph on these params.")
      leaf = by_path[m.path]
      axis = norm_axis(int(m.axis), leaf, m.path, name)
      idx = np.asarray(m.indices)
      if idx.ndim == 1:
        idx = idx[:, None]
      if idx.ndim != 2 or idx.shape[0] != int(g.size) or not np.issubdtype(idx.dtype,
                                                                            np.integer):
        raise ValueError(f"{name}: member {m.path!r} of a group of size {g.size} has indices "
                         f"of shape {idx.shape} and dtype {idx.dtype}; expected ints of shape "
                         f"({g.size}, k).")
      dim = leaf.shape[axis]
      if idx.size and (idx.min() < 0 or idx.max() >= dim):
        raise ValueError(f"{name}: member {m.path!r} has indices outside [0, {dim}) along axis "
                         f"{axis} (shape {tuple(leaf.shape)}); the groups do not match these "
                         "params.")
      members.append((m.path, axis, idx))
    out.append((int(g.size), tuple(members), getattr(g, "index", len(out))))
  return out


def slice_sq(z, axis: int):
  """Squared norm of every slice along ``axis`` (float32, shape ``(dim,)``)."""
  x = jnp.asarray(z).astype(F32)
  other = tuple(a for a in range(x.ndim) if a != axis)
  return jnp.sum(x * x, axis=other) if other else x * x


def graph_norms(checked, z_by_path: dict):
  """The joint norm of every channel of every group: a list of ``(size,)`` float32 arrays."""
  cache, out = {}, []
  for size, members, _ in checked:
    total = jnp.zeros((size,), F32)
    for path, axis, idx in members:
      key = (path, axis)
      if key not in cache:
        cache[key] = slice_sq(z_by_path[path], axis)
      total = total + jnp.sum(cache[key][idx], axis=-1)
    out.append(jnp.sqrt(total))
  return out


def graph_factors(checked, factors, shapes: dict):
  """Per (path, axis) factor vectors: the product over the groups covering each index."""
  vectors = {}
  for (size, members, _), factor in zip(checked, factors):
    for path, axis, idx in members:
      key = (path, axis)
      vec = vectors.get(key, jnp.ones((shapes[path][axis],), F32))
      k = idx.shape[1]
      vectors[key] = vec.at[idx.reshape(-1)].multiply(jnp.repeat(factor, k))
  return vectors


def along(vec, axis: int, ndim: int):
  """``vec`` reshaped to broadcast along ``axis`` of an ``ndim``-d array."""
  shape = [1] * ndim
  shape[axis] = vec.shape[0]
  return vec.reshape(shape)


def leaf_arrays(paths, leaves):
  return {p: x for p, x in zip(paths, leaves) if is_array(x)}
