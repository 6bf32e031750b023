"""``trace``: the groups of coupled parameter axes of a function, from its jaxpr."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from jax.extend import core as jex_core
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from jaxprune.core import describe, flatten_with_paths, is_array, listing
from jaxprune.structure import _rules
from jaxprune.structure._graph import Graph, Group, Member


@dataclasses.dataclass(frozen=True, eq=False)
class Traced:
  """What ``prune`` needs from a trace (private)."""
  apply_fn: Callable
  kwargs: dict
  closed: Any            # ClosedJaxpr of (params, *args)
  scope: _rules.Scope
  root: np.ndarray       # element -> component id
  paths: tuple           # param leaf paths
  param_ids: tuple       # per leaf: tuple of id arrays per axis
  param_treedef: Any
  param_avals: tuple
  arg_avals: tuple
  arg_treedef: Any
  out_treedef: Any
  group_roots: tuple     # per group: component id of each channel


class _UnionFind:
  """Vectorised union-find over component ids."""

  def __init__(self, n):
    self.parent = np.arange(n)

  def find(self, x):
    x = np.asarray(x)
    while True:
      p = self.parent[x]
      if np.array_equal(p, x):
        return x
      self.parent[x] = self.parent[p]
      x = p

  def union(self, a, b):
    while True:
      ra, rb = self.find(a), self.find(b)
      diff = ra != rb
      if not diff.any():
        return
      self.parent[ra[diff]] = rb[diff]


def _check_params(params):
  paths, leaves, _ = flatten_with_paths(params)
  if not leaves:
    raise ValueError("structure.trace got params without array leaves: nothing to prune. Pass "
                     "the parameter pytree that apply_fn reads (e.g. flax `variables`).")
  for p, x in zip(paths, leaves):
    if not is_array(x):
      raise TypeError(f"params at '{p}' must be an array; got {describe(x)}. Close over "
                      "non-array settings in apply_fn or pass them as keyword arguments.")
  return paths, leaves


def trace(apply_fn: Callable, params, *example_args, **kwargs) -> Graph:
  """Finds the groups of parameter axes that must be cut together in ``apply_fn``.

  ``apply_fn(params, *example_args, **kwargs)`` is traced once with ``jax.make_jaxpr``
  (keyword arguments are static); any pytree of params works: flax linen variables (with
  ``batch_stats``), ``nnx.State`` (see :func:`from_module`), equinox arrays, dicts.

  Args:
    apply_fn: the model, ``apply_fn(params, *args, **kwargs) -> outputs``.
    params: the parameters it reads (every array leaf must be read).
    *example_args: example inputs (any pytree of arrays); their shapes fix the trace.
    **kwargs: static keyword arguments of ``apply_fn`` (e.g. ``train=False``).

  Returns:
    A :class:`Graph`. Axes that reach the inputs or outputs, that a reduction or normalisation
    statistic runs over, or that pass a primitive jaxprune does not follow, form groups marked
    not prunable with the reason.

  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"w1": jnp.ones((3, 8)), "b1": jnp.ones(8), "w2": jnp.ones((8, 2))}
  >>> f = lambda p, x: jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"]
  >>> g = structure.trace(f, p, jnp.ones((1, 3)))
  >>> [(grp.size, grp.prunable, grp.paths) for grp in g.prunable]
  [(8, True, ('b1', 'w1', 'w2'))]
  """
  if not callable(apply_fn):
    raise TypeError(f"structure.trace expects a callable apply_fn; got {describe(apply_fn)}.")
  paths, leaves = _check_params(params)
  fn = lambda p, *a: apply_fn(p, *a, **kwargs)  # noqa: E731
  try:
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, *example_args)
  except Exception as err:  # noqa: BLE001 - re-raised with a hint
    raise TypeError(
        f"structure.trace could not trace apply_fn(params, *example_args, **kwargs): "
        f"{type(err).__name__}: {err}. It must run under jax.make_jaxpr with these example "
        "arguments; pass static options (train=False, ...) as keyword arguments.") from err
  arg_leaves, arg_treedef = jax.tree_util.tree_flatten(example_args)
  return build(closed, out_shape, apply_fn, kwargs, params, paths, leaves, arg_leaves,
               arg_treedef)


def build(closed, out_shape, apply_fn, kwargs, params, paths, leaves, arg_leaves,
          arg_treedef) -> Graph:
  """Analyses a traced jaxpr into groups (also used to re-trace at new input shapes)."""
  jaxpr = closed.jaxpr
  n_params = len(leaves)
  _check_read(jaxpr, paths, n_params)
  flow = _rules.Flow()
  in_ids = [tuple(flow.fresh(n) for n in v.aval.shape) for v in jaxpr.invars]
  scope = _rules.run(flow, jaxpr, in_ids, [True] * n_params + [False] * len(arg_leaves))
  edge_frozen = []
  for k, ids in enumerate(in_ids[n_params:]):
    edge_frozen += [(x, f"connected to the model's inputs (argument leaf {k})") for x in ids]
  for v in jaxpr.outvars:
    if not isinstance(v, jex_core.Literal):
      edge_frozen += [(x, "reaches the model's outputs") for x in scope.env[v]]
  flow.frozen = edge_frozen + flow.frozen
  param_ids = tuple(in_ids[:n_params])
  root, reasons = _components(flow, param_ids)
  groups, group_roots = _groups(root, reasons, paths, param_ids)
  traced = Traced(apply_fn, kwargs, closed, scope, root, tuple(paths), param_ids,
                  jax.tree_util.tree_structure(params),
                  tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves),
                  tuple(jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", None))
                        for x in arg_leaves), arg_treedef,
                  jax.tree_util.tree_structure(out_shape), tuple(group_roots))
  return Graph(tuple(groups), traced)


def _check_read(jaxpr, paths, n_params):
  used = set()
  for eqn in jaxpr.eqns:
    used.update(v for v in eqn.invars if not isinstance(v, jex_core.Literal))
  used.update(v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal))
  unread = [p for p, v in zip(paths, jaxpr.invars[:n_params]) if v not in used]
  if unread:
    raise ValueError(
        f"apply_fn never reads these params: {listing(unread)}. structure.trace needs exactly "
        "the parameters the function uses: drop the unread leaves from params (or close over "
        "them) before tracing.")


def _components(flow, param_ids):
  n = flow.count
  if flow.unions:
    a = np.concatenate([u[0] for u in flow.unions])
    b = np.concatenate([u[1] for u in flow.unions])
  else:
    a = b = np.zeros(0, np.int64)
  adj = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
  ncomp, labels = connected_components(adj, directed=False)
  uf = _UnionFind(ncomp)
  attached = np.zeros(ncomp, bool)
  for ids in param_ids:
    for x in ids:
      attached[labels[x]] = True
  for flat, factors in flow.records:
    _resolve(flow, uf, labels, attached, flat, factors)
  root = uf.find(labels)
  reasons = {}
  for ids, reason in flow.frozen:
    for r in np.unique(root[ids]):
      reasons.setdefault(int(r), reason)
  return root, reasons


def _resolve(flow, uf, labels, attached, flat, factors):
  """Unites a flat axis with one of its factors (the carrier) and freezes the others."""
  comps = uf.find(labels[flat])
  k = len(factors)
  const = []
  for j in range(k):
    moved = np.moveaxis(comps, j, 0).reshape(comps.shape[j], -1)
    if (moved == moved[:, :1]).all() and comps.shape[j] > 1:
      const.append(j)
  cands = const if len(const) == 1 else [
      j for j in (const or range(k)) if attached[uf.find(labels[factors[j]])].any()]
  carrier = cands[0] if cands else 0
  shape = [1] * k
  shape[carrier] = len(factors[carrier])
  f = np.broadcast_to(labels[factors[carrier]].reshape(shape), flat.shape)
  was = attached[comps].any() or attached[uf.find(f.ravel())].any()
  uf.union(comps.ravel(), f.ravel())
  attached[uf.find(comps.ravel())] |= was
  for j in range(k):
    if j != carrier:
      flow.freeze(factors[j], f"reshaped together with a {len(factors[carrier])}-wide axis "
                  f"(into or out of one flat axis of size {flat.size}); only that axis can be "
                  "cut")


def _mix(x):
  """splitmix64 finaliser (uint64, wrapping): a set hash of (leaf, axis, count) pairs."""
  x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _groups(root, reasons, paths, param_ids):
  """Components with the same members (leaf, axis, count) and reason form one group."""
  rows = []  # (root, leaf, axis, index)
  rank = max([len(ids) for ids in param_ids] + [1])
  for j, ids in enumerate(param_ids):
    for a, x in enumerate(ids):
      if len(x):
        r = root[x]
        rows.append(np.stack([r, np.full_like(r, j), np.full_like(r, a), np.arange(len(x))], 1))
  if not rows:
    return [], []
  t = np.concatenate(rows)
  pk = t[:, 1] * rank + t[:, 2]
  span = int(pk.max()) + 1
  ukey, counts = np.unique(t[:, 0] * span + pk, return_counts=True)
  proot, ppk = ukey // span, ukey % span
  with np.errstate(over="ignore"):
    h = _mix(ppk.astype(np.uint64) * np.uint64(1 << 32) + counts.astype(np.uint64))
    h2 = _mix(h ^ np.uint64(0x5DEECE66D))
  roots, starts = np.unique(proot, return_index=True)
  with np.errstate(over="ignore"):
    sig1, sig2 = np.add.reduceat(h, starts), np.add.reduceat(h2, starts)
  names = sorted(set(reasons.values()))
  reason_id = np.array([names.index(reasons[int(r)]) if int(r) in reasons else -1
                        for r in roots]) if names else np.full(len(roots), -1)
  key = np.stack([sig1.view(np.int64), sig2.view(np.int64), reason_id], 1)
  _, gid = np.unique(key, axis=0, return_inverse=True)
  gid = gid.ravel()
  # first (smallest) index of each root, to order the channels of a group
  order = np.lexsort((t[:, 3], pk, t[:, 0]))
  t, pk = t[order], pk[order]
  first_row = np.searchsorted(t[:, 0], roots)
  first_idx = t[first_row, 3]
  root_pos = np.searchsorted(roots, t[:, 0])
  ranked = np.lexsort((first_idx, gid))  # roots by group, then first index
  within = np.empty(len(roots), np.int64)
  gstart = np.searchsorted(gid[ranked], np.arange(gid.max() + 1))
  within[ranked] = np.arange(len(roots)) - gstart[gid[ranked]]
  row_g, row_w = gid[root_pos], within[root_pos]
  order = np.lexsort((t[:, 3], row_w, pk, row_g))
  t, pk, row_g = t[order], pk[order], row_g[order]
  bkey, bstart = np.unique(row_g * span + pk, return_index=True)
  bend = list(bstart[1:]) + [len(t)]
  sizes = np.bincount(gid)
  found = {}
  for k, s0, s1 in zip(bkey, bstart, bend):
    g, (j, a) = int(k // span), divmod(int(k % span), rank)
    found.setdefault(g, []).append(Member(paths[j], a, t[s0:s1, 3].reshape(sizes[g], -1)))
  out = []
  for g, members in found.items():
    r0 = roots[ranked[gstart[g]]]
    reason = reasons.get(int(r0))
    if reason is None and sizes[g] == 1:
      reason = "a single channel: cutting it would remove the whole axis"
    sort_key = (paths.index(members[0].path), members[0].axis, int(members[0].indices[0, 0]))
    out.append((sort_key, members, int(sizes[g]), reason, roots[ranked[gstart[g]:gstart[g]
                                                                       + sizes[g]]]))
  out.sort(key=lambda f: f[0])
  groups = [Group(i, tuple(m), n, reason is None, reason)
            for i, (_, m, n, reason, _) in enumerate(out)]
  return groups, [f[4] for f in out]
