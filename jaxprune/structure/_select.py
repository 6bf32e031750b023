"""Which channels of each group to keep: per-group or global ranking, ``round_to``, minimum."""

from __future__ import annotations

import numbers

import numpy as np

from jaxprune.core import check_sparsity, describe
from jaxprune.structure._graph import Graph, Group
from jaxprune.structure._scores import group_scores


def _name(g: Group) -> str:
  return f"group {g.index} ({', '.join(g.paths[:4])}{', ...' if len(g.paths) > 4 else ''})"


def _targets(graph: Graph, sparsity) -> dict:
  if isinstance(sparsity, dict):
    out = {}
    for i, s in sparsity.items():
      if not isinstance(i, numbers.Integral) or not 0 <= int(i) < len(graph):
        raise ValueError(f"sparsity keys must be group indices in [0, {len(graph)}); got "
                         f"{i!r}. See print(graph) for the groups.")
      s = check_sparsity(s, f"group {i}")
      if s > 0 and not graph[i].prunable:
        raise ValueError(f"{_name(graph[i])} is not prunable: {graph[i].reason}. Remove it "
                         "from the sparsity dict (print(graph) lists the prunable groups).")
      out[int(i)] = s
    return out
  s = check_sparsity(sparsity, "<all prunable groups>")
  if not isinstance(s, float):
    raise TypeError(f"structure sparsity must be a static float; got {describe(sparsity)}.")
  return {g.index: s for g in graph.prunable}


def _count(g: Group, s: float, round_to: int, min_keep) -> int:
  keep = g.size - int(round(s * g.size))
  if round_to > 1:
    if round_to > g.size:
      raise ValueError(f"round_to={round_to} is larger than {_name(g)}, which has {g.size} "
                       "channels. Use a smaller round_to or leave this group out (sparsity "
                       "dict).")
    keep = max(round_to, int(round(keep / round_to)) * round_to)
    if keep > g.size:
      keep = (g.size // round_to) * round_to
  if min_keep is not None:
    keep = max(keep, min(int(min_keep), g.size))
  if keep < 1:
    raise ValueError(f"sparsity {s} would remove every channel of {_name(g)} ({g.size} "
                     "channels). Use a smaller sparsity for this group or pass min_keep=.")
  return keep


def _top(scores, k: int) -> np.ndarray:
  order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, np.float64)))
  return np.sort(order[:k])


def select(graph: Graph, params, sparsity, *, scores="l2", ranking: str = "group",
           round_to: int = 1, min_keep: int | None = None, grads=None, key=None) -> dict:
  """The channels to keep: ``{group index: sorted kept indices}`` for the pruned groups.

  Args:
    graph: from :func:`jaxprune.structure.trace`.
    params: the params it was traced with.
    sparsity: the fraction of channels removed: one float for every prunable group, or
      ``{group index: float}``.
    scores: a :func:`group_scores` method or element-score pytree or callable, or the result of
      :func:`group_scores` (``{group index: scores}``).
    ranking: ``"group"`` (each group loses ``sparsity`` of its channels) or ``"global"`` (one
      ranking over all pruned groups of scores divided by their group's mean; removes
      ``round(sparsity * total)`` channels, at least one kept per group).
    round_to: keep a multiple of this many channels per group (e.g. 8 for hardware).
    min_keep: keep at least this many channels per group; without it a sparsity that removes
      a whole group raises.
    grads, key: passed to :func:`group_scores`.

  >>> import jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"a": jnp.array([[1., -3., .5, 2.]]), "b": jnp.ones((4, 1))}
  >>> g = structure.trace(lambda p, x: (x @ p["a"]) @ p["b"], p, jnp.ones((1, 1)))
  >>> [k.tolist() for k in structure.select(g, p, 0.5, scores="l1").values()]
  [[1, 3]]
  """
  if not isinstance(round_to, numbers.Integral) or round_to < 1:
    raise ValueError(f"round_to must be a positive int; got {round_to!r}.")
  if ranking not in ("group", "global"):
    raise ValueError(f"ranking must be 'group' or 'global'; got {ranking!r}.")
  targets = _targets(graph, sparsity)
  if isinstance(scores, dict) and all(isinstance(k, numbers.Integral) for k in scores):
    table = scores
  else:
    table = group_scores(graph, params, scores, grads=grads, key=key, groups=list(targets))
  for i in targets:
    if i not in table or np.shape(table[i]) != (graph[i].size,):
      raise ValueError(f"scores for {_name(graph[i])} must have shape ({graph[i].size},); got "
                       f"{describe(table.get(i))}.")
  table = {i: np.asarray(table[i], np.float64) for i in targets}
  if ranking == "global" and not isinstance(sparsity, dict):
    counts = _global_counts(graph, table, targets)
  else:
    counts = {i: graph[i].size - int(round(s * graph[i].size)) for i, s in targets.items()}
  out = {}
  for i, keep in counts.items():
    g = graph[i]
    s = 1.0 - keep / g.size
    out[i] = _top(table[i], _count(g, s, round_to, min_keep))
  return out


def _global_counts(graph, table, targets):
  s = next(iter(targets.values()), 0.0)
  ids, vals = [], []
  for i in targets:
    v = table[i] / max(float(np.mean(np.abs(table[i]))), 1e-12)
    ids.append(np.full(len(v), i))
    vals.append(v)
  if not ids:
    return {}
  ids, vals = np.concatenate(ids), np.concatenate(vals)
  remove = int(round(s * len(vals)))
  order = np.lexsort((np.arange(len(vals)), vals))[:remove]
  counts = {i: graph[i].size for i in targets}
  for i in ids[order]:
    if counts[int(i)] > 1:
      counts[int(i)] -= 1
  return counts
