"""Per-channel scores of groups, computed from the members' slices (higher = kept)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core import describe, flatten_with_paths, is_tracer, leaves_like
from jaxprune.structure._graph import Graph, Group

METHODS = ("l1", "l2", "taylor", "scale", "random")
SCALE_NAMES = ("scale", "gamma", "weight")


def _host(tree_leaves) -> bool:
  return not any(is_tracer(x) for x in tree_leaves)


def channel_sums(group: Group, leaves: dict, fn: Callable):
  """``Σ fn(x)`` over each channel's slices of every member: an array of shape ``(size,)``.

  Concrete arrays are summed with numpy on the host (no XLA dispatch per member); traced
  ones with ``jax.numpy``.
  """
  xp = np if _host(leaves.values()) else jnp
  total = xp.zeros(group.size, xp.float32)
  for m in group.members:
    x = leaves[m.path]
    x = np.asarray(x, np.float32) if xp is np else x.astype(jnp.float32)
    v = fn(x, m.path)
    per = v.sum(axis=tuple(a for a in range(v.ndim) if a != m.axis))
    total = total + per[m.indices].sum(axis=1)
  return total


def group_scores(graph: Graph, params, method="l2", *, grads=None, key=None,
                 groups=None, scale_names=SCALE_NAMES) -> dict:
  """Scores every channel of every group: ``{group index: array of shape (size,)}``.

  Args:
    graph: from :func:`jaxprune.structure.trace`.
    params: the params the graph was traced with.
    method: ``"l2"`` (the L2 norm of a channel's weights over all members), ``"l1"``,
      ``"taylor"`` (first-order Taylor ``|Σ g·w|`` over the channel, Molchanov et al. 2019;
      needs ``grads``), ``"scale"`` (network slimming: ``|γ|`` of the norm scales among the
      members, 1-D leaves named like ``scale_names``), ``"random"`` (needs ``key``); or a
      pytree shaped like params of element scores (any ``jaxprune.scores`` result, e.g.
      ``jaxprune.scores.obd(...)`` for the sum of an OBD diagonal over the group, or
      ``jaxprune.scores.hessian_diag(...)`` for the per-group Hessian trace), summed per
      channel; or a callable ``fn(group, params) -> array of shape (group.size,)``.
    grads: gradients shaped like params (``"taylor"``).
    key: a ``jax.random`` key (``"random"``).
    groups: indices of the groups to score (default: all).
    scale_names: last path components that ``"scale"`` treats as norm scales.

  Returns:
    ``{group.index: scores}`` for every group asked for (not-prunable ones included): numpy arrays for
    concrete inputs, jax arrays under ``jax.jit``.

  >>> import jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"a": jnp.array([[1., -3.], [1., 0.]]), "b": jnp.ones((2, 1))}
  >>> g = structure.trace(lambda p, x: (x @ p["a"]) @ p["b"], p, jnp.ones((1, 2)))
  >>> hidden = g.find("b", 0)[0].index
  >>> structure.group_scores(g, p, "l1")[hidden].tolist()
  [3.0, 4.0]
  """
  paths, leaves, _ = flatten_with_paths(params)
  by_path = dict(zip(paths, leaves))
  chosen = list(graph) if groups is None else [graph[int(i)] for i in groups]
  if callable(method) and not isinstance(method, str):
    return {g.index: _checked(g, method(g, params)) for g in chosen}
  if isinstance(method, str):
    if method not in METHODS:
      raise ValueError(f"group_scores method must be one of {METHODS}, a pytree of element "
                       f"scores or a callable; got {method!r}.")
    return {g.index: _named(g, by_path, method, grads, key, scale_names, params)
            for g in chosen}
  element = dict(zip(paths, leaves_like(params, method, name="scores")))
  for p, x in element.items():
    if x is not None and tuple(np.shape(x)) != tuple(np.shape(by_path[p])):
      raise ValueError(f"scores at '{p}' has shape {np.shape(x)} but params there has shape "
                       f"{np.shape(by_path[p])}: got {describe(x)}. Compute the element "
                       "scores from these params.")
  return {g.index: channel_sums(_present(g, element), element, lambda x, p: x) for g in chosen}


def _present(group, element):
  members = tuple(m for m in group.members if element.get(m.path) is not None)
  return Group(group.index, members, group.size, group.prunable, group.reason)


def _checked(group, s):
  s = jnp.asarray(s)
  if s.shape != (group.size,):
    raise ValueError(f"a score callable must return shape ({group.size},) for group "
                     f"{group.index} ({', '.join(group.paths)}); got {describe(s)}.")
  return s


def _named(group, by_path, method, grads, key, scale_names, params):
  if method == "l1":
    return channel_sums(group, by_path, lambda x, p: abs(x))
  if method == "l2":
    return channel_sums(group, by_path, lambda x, p: x * x) ** 0.5
  if method == "taylor":
    if grads is None:
      raise ValueError("group_scores(method='taylor') needs grads=: the gradients of the loss "
                       "with respect to params (e.g. jax.grad(loss_fn)(params, x, y)).")
    g = dict(zip(flatten_with_paths(params)[0], leaves_like(params, grads, name="grads")))
    host = _host(g.values()) and _host(by_path.values())
    g = {p: np.asarray(v, np.float32) if host else v for p, v in g.items()}
    return abs(channel_sums(group, by_path, lambda x, p: x * g[p]))
  if method == "random":
    if key is None:
      raise ValueError("group_scores(method='random') needs key=: a jax.random key.")
    return jax.random.uniform(jax.random.fold_in(key, group.index), (group.size,))
  scales = tuple(m for m in group.members if by_path[m.path].ndim == 1
                 and m.path.split("/")[-1] in scale_names)
  if not scales:
    if not group.prunable:
      return jnp.zeros(group.size)
    raise ValueError(
        f"group_scores(method='scale'): group {group.index} ({', '.join(group.paths)}) has no "
        f"norm scale (1-D leaf named one of {scale_names}). Use another method for models "
        "without norms between layers, prune only the groups with norms (sparsity={group "
        "index: fraction}), or pass scale_names=.")
  sub = Group(group.index, scales, group.size, group.prunable, group.reason)
  return channel_sums(sub, by_path, lambda x, p: abs(x))
