"""From what regularisation zeroed to masks (``keep_sparse``) and kept channels (``structure``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxprune import filters
from jaxprune.core import describe, flatten_with_paths
from jaxprune.regularize import _groups


def masks_from_zeros(params, *, where=None):
  """Masks that prune exactly the entries that are 0: ``params != 0`` on the selected leaves.

  Feed them to ``jaxprune.keep_sparse`` to fine-tune with the zeros kept (without the
  penalty), or to ``jaxprune.summary``. Jit-able.

  Args:
    params: any pytree (e.g. after training with :func:`l1` or :func:`group_lasso`).
    where: the leaves that get a mask (``jaxprune.filters``; default ``ndim >= 2``); use the
      ``where`` the regulariser had. Other leaves get ``None``.

  Returns:
    A masks pytree: a bool array (True = kept = non-zero) per selected leaf, None elsewhere.

  >>> import jax.numpy as jnp
  >>> masks_from_zeros({"w": jnp.array([[0.0, 1.0]]), "b": jnp.zeros(2)})
  {'b': None, 'w': Array([[False,  True]], dtype=bool)}
  """
  picked = filters.select(params, where)
  _, leaves, treedef = flatten_with_paths(params)
  return treedef.unflatten([jnp.asarray(x) != 0 if k else None for x, k in zip(leaves, picked)])


def zero_groups(params, groups, *, where=None, tol: float = 0.0) -> dict:
  """The groups whose norm is ``<= tol`` (exactly zero by default), as index arrays.

  Host-side (needs concrete params). With an int axis: ``{path: indices along that axis}``
  for every selected leaf; with ``jaxprune.structure`` groups: ``{group.index: channel
  indices}`` for every prunable group, the norm taken jointly over all members.

  >>> import numpy as np
  >>> zero_groups({"w": np.array([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]])}, -1)
  {'w': array([1])}
  """
  return {k: np.flatnonzero(n <= tol) for k, n in _norms(params, groups, where,
                                                         "zero_groups").items()}


def kept_channels(params, graph, *, tol: float = 0.0) -> dict:
  """``{group.index: kept channel indices}`` for ``jaxprune.structure.prune(..., keep=...)``.

  A channel is kept when its joint norm over the group's members is ``> tol``: after
  :func:`group_lasso` with the graph's groups, ``structure.prune(graph, params,
  keep=kept_channels(params, graph))`` removes exactly the zeroed channels. A group whose
  channels are all zero keeps its largest-norm channel (``structure.prune`` refuses to remove
  every channel of a group).

  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"a": jnp.array([[1., 0., 2.]]), "b": jnp.array([[1.], [0.], [3.]])}
  >>> graph = structure.trace(lambda p, x: jax.nn.relu(x @ p["a"]) @ p["b"], p, jnp.ones((1, 1)))
  >>> hidden = graph.find("b", 0)[0].index
  >>> kept_channels(p, graph)[hidden].tolist()
  [0, 2]
  """
  kind, _ = _groups.parse(graph, "kept_channels")
  if kind != "graph":
    raise TypeError(f"kept_channels: needs a jaxprune.structure graph or its groups; got "
                    f"{describe(graph)}. For an int axis use zero_groups.")
  out = {}
  for index, norm in _norms(params, graph, None, "kept_channels").items():
    kept = np.flatnonzero(norm > tol)
    out[index] = kept if kept.size else np.array([int(np.argmax(norm))])
  return out


def _norms(params, groups, where, name):
  kind, spec = _groups.parse(groups, name)
  paths, leaves, _ = flatten_with_paths(params)
  if kind == "axis":
    picked = filters.select(params, where)
    return {p: np.sqrt(np.asarray(_groups.slice_sq(x, _groups.norm_axis(spec, x, p, name))))
            for p, x, k in zip(paths, leaves, picked) if k}
  if where is not None:
    raise ValueError(f"{name}: where= must be None with structure groups.")
  by_path = _groups.leaf_arrays(paths, leaves)
  checked = _groups.check_graph(spec, by_path, name)
  return {index: np.asarray(n) for (_, _, index), n in zip(
      checked, _groups.graph_norms(checked, by_path))}


