"""``prune``: physically smaller params and the function that runs them."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core import describe, flatten_with_paths
from jaxprune.structure import _interpret, _trace
from jaxprune.structure._graph import Graph
from jaxprune.structure._select import _name, select


def _check_graph(graph):
  if not isinstance(graph, Graph) or graph._traced is None:
    raise TypeError(f"expected a Graph from jaxprune.structure.trace; got {describe(graph)}.")
  return graph._traced


def _check_keep(graph, keep) -> dict:
  if not isinstance(keep, dict):
    raise TypeError(f"keep must be a dict {{group index: kept channel indices}}; got "
                    f"{describe(keep)}.")
  out = {}
  for i, idx in keep.items():
    if not isinstance(i, numbers.Integral) or not 0 <= int(i) < len(graph):
      raise ValueError(f"keep keys must be group indices in [0, {len(graph)}); got {i!r}.")
    g = graph[i]
    idx = np.unique(np.asarray(idx, np.int64).ravel())
    if len(idx) == g.size:
      continue
    if not g.prunable:
      raise ValueError(f"{_name(g)} is not prunable: {g.reason}. It cannot be cut; leave it "
                       "out of keep.")
    if len(idx) == 0:
      raise ValueError(f"keep would remove every channel of {_name(g)}. Keep at least one.")
    if idx.min() < 0 or idx.max() >= g.size:
      raise ValueError(f"keep[{i}] has indices outside [0, {g.size}) for {_name(g)}: got "
                       f"{idx.min()}..{idx.max()}.")
    out[int(i)] = idx
  return out


def removed_elements(t, graph, keep) -> np.ndarray:
  """Element -> removed, for the kept channels ``keep`` of ``graph``."""
  removed_root = np.zeros(int(t.root.max()) + 1 if t.root.size else 0, bool)
  for i, idx in keep.items():
    gone = np.setdiff1d(np.arange(graph[i].size), idx)
    removed_root[t.group_roots[i][gone]] = True
  return removed_root[t.root]


def _check_params(t, params, name="params"):
  paths, leaves, treedef = flatten_with_paths(params)
  if treedef != t.param_treedef:
    raise ValueError(f"{name} must have the tree structure the graph was traced with; got "
                     f"leaves {paths[:5]}... vs {list(t.paths[:5])}...")
  return paths, leaves


def masks(graph: Graph, keep: dict):
  """jaxprune-style masks (True = kept, None = untouched leaf) of the removed channels.

  ``jaxprune.apply_masks(params, masks(graph, keep))`` is the dense model with every removed
  entry zeroed: the reference that the small model of :func:`prune` equals.

  >>> import jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"a": jnp.ones((1, 4)), "b": jnp.ones((4, 1))}
  >>> g = structure.trace(lambda p, x: (x @ p["a"]) @ p["b"], p, jnp.ones((1, 1)))
  >>> structure.masks(g, {g.find("b", 0)[0].index: [0, 2]})["b"][:, 0].tolist()
  [True, False, True, False]
  """
  t = _check_graph(graph)
  removed = removed_elements(t, graph, _check_keep(graph, keep))
  out = []
  for ids, aval in zip(t.param_ids, t.param_avals):
    m = np.ones(aval.shape, bool)
    for a, e in enumerate(ids):
      shape = [1] * len(aval.shape)
      shape[a] = len(e)
      m = m & ~removed[e].reshape(shape)
    out.append(None if m.all() else jnp.asarray(m))
  return t.param_treedef.unflatten(out)


class SmallApply:
  """``small_apply(small_params, *args)``: runs the cut model (re-traced at new input shapes)."""

  def __init__(self, graph, keep, small_avals):
    self._graph, self._keep, self._small_avals = graph, keep, small_avals
    t = graph._traced
    self._cache = {self._key(t.arg_avals, t.arg_treedef): (t, removed_elements(t, graph, keep))}

  @staticmethod
  def _key(avals, treedef):
    return (treedef, tuple((tuple(a.shape), str(a.dtype)) for a in avals))

  def _for(self, args):
    leaves, treedef = jax.tree_util.tree_flatten(args)
    avals = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in leaves]
    key = self._key(avals, treedef)
    if key not in self._cache:
      t = self._graph._traced
      dense = t.param_treedef.unflatten(list(t.param_avals))
      fn = lambda p, *a: t.apply_fn(p, *a, **t.kwargs)  # noqa: E731
      closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(dense, *treedef.unflatten(avals))
      graph = _trace.build(closed, out_shape, t.apply_fn, t.kwargs, dense, list(t.paths),
                           list(t.param_avals), avals, treedef)
      _same_groups(self._graph, graph)
      self._cache[key] = (graph._traced, removed_elements(graph._traced, graph, self._keep))
    return self._cache[key], leaves

  def __call__(self, small_params, *args):
    (t, removed), arg_leaves = self._for(args)
    paths, leaves = _check_params(t, small_params, "small_params")
    for p, x, a in zip(paths, leaves, self._small_avals):
      if tuple(jnp.shape(x)) != tuple(a.shape):
        raise ValueError(f"small_params at '{p}' has shape {tuple(jnp.shape(x))}; the pruned "
                         f"model expects {tuple(a.shape)}. Pass the small_params that "
                         "structure.prune returned (or arrays of the same shapes).")
    cut = _interpret.Cut(removed)
    outs = _interpret.run(cut, t.scope, t.closed.consts, list(leaves) + list(arg_leaves))
    return t.out_treedef.unflatten(outs)


def _same_groups(a, b):
  ok = len(a) == len(b) and all(
      len(x.members) == len(y.members) and all(
          m.path == n.path and m.axis == n.axis and np.array_equal(m.indices, n.indices)
          for m, n in zip(x.members, y.members)) for x, y in zip(a, b))
  if not ok:
    raise ValueError("re-tracing apply_fn at these input shapes found different groups than "
                     "the trace the model was pruned with; call structure.trace with example "
                     "inputs of these shapes and prune again.")


def prune(graph: Graph, params, sparsity=None, *, scores="l2", keep: dict | None = None,
          ranking: str = "group", round_to: int = 1, min_keep: int | None = None, grads=None,
          key=None):
  """Cuts channels out of the arrays: ``(small_params, small_apply)``.

  Args:
    graph: from :func:`jaxprune.structure.trace` on these params.
    params: the dense params.
    sparsity: the fraction of channels removed per prunable group (a float, or
      ``{group index: float}``); see :func:`select` for ``scores``, ``ranking``,
      ``round_to``, ``min_keep``, ``grads`` and ``key``.
    keep: instead of ``sparsity``: ``{group index: kept channel indices}``.

  Returns:
    ``small_params`` (same tree, physically smaller arrays) and ``small_apply(small_params,
    *args)``, which re-evaluates the traced jaxpr with every shape cut: jit-able,
    differentiable and exportable with ``jax.export``. Its output equals ``apply_fn`` on the
    dense params with every removed entry zeroed (``jaxprune.apply_masks(params,
    structure.masks(graph, keep))``). Called with inputs of other shapes it re-traces
    ``apply_fn`` once per new shape.

  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"w1": jnp.arange(24.).reshape(3, 8), "w2": jnp.ones((8, 2))}
  >>> f = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
  >>> small, small_f = structure.prune(structure.trace(f, p, jnp.ones((1, 3))), p, 0.5)
  >>> small["w1"].shape, small["w2"].shape, small_f(small, jnp.ones((5, 3))).shape
  ((3, 4), (4, 2), (5, 2))
  """
  t = _check_graph(graph)
  if (sparsity is None) == (keep is None):
    raise ValueError("structure.prune takes either sparsity= (with scores=) or keep= "
                     "({group index: kept indices}), not both or neither.")
  if keep is None:
    keep = select(graph, params, sparsity, scores=scores, ranking=ranking, round_to=round_to,
                  min_keep=min_keep, grads=grads, key=key)
  keep = _check_keep(graph, keep)
  paths, leaves = _check_params(t, params)
  for p, x, a in zip(paths, leaves, t.param_avals):
    if tuple(jnp.shape(x)) != tuple(a.shape):
      raise ValueError(f"params at '{p}' has shape {tuple(jnp.shape(x))} but the graph was "
                       f"traced with {tuple(a.shape)}. Trace these params.")
  cut = _interpret.Cut(removed_elements(t, graph, keep))
  small = [_interpret.slice_value(cut, ids, jnp.asarray(x)) for ids, x in zip(t.param_ids, leaves)]
  avals = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in small]
  return t.param_treedef.unflatten(small), SmallApply(graph, keep, avals)
