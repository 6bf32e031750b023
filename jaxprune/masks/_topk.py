"""Unstructured masks: per-leaf and global exact top-k."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxprune.core import check_sparsity, count_dtype
from jaxprune.masks import _plan, _search, _xla
from jaxprune.masks._counts import keep_count
from jaxprune.masks._plan import is_scalar_sparsity

_NORMALIZERS = ("l1", "l2", "max", "mean")


def topk(scores, sparsity, *, where=None, previous=None):
  """Per-leaf masks keeping the largest scores: exactly ``n - round(sparsity * n)`` per leaf.

  Args:
    scores: pytree of floating arrays (higher = more important = kept), shaped like params.
    sparsity: fraction of zeros in [0, 1], one float (may be traced under ``jax.jit``), or a
      pytree of float|None per leaf (e.g. from :mod:`jaxprune.allocate`; None = not pruned).
    where: which leaves are pruned when ``sparsity`` is one float (default: ``ndim >= 2``);
      see :mod:`jaxprune.filters`.
    previous: masks from an earlier step; entries pruned there stay pruned (the mask never
      grows; if it held fewer entries than requested, it is returned unchanged).

  Returns:
    A pytree like ``scores``: bool arrays (True = kept) for pruned leaves, ``None`` elsewhere.
    Ties are broken by lower row-major index; NaN scores rank lowest (pruned first).

  >>> import jax.numpy as jnp
  >>> masks = topk({"w": jnp.array([[3., 1.], [2., 4.]]), "b": jnp.ones(2)}, 0.5)
  >>> masks["w"].tolist(), masks["b"]
  ([[True, False], [False, True]], None)
  """
  leaves, treedef = _plan.plan(scores, sparsity, where, previous)
  kept, token = [], jnp.zeros((), jnp.int32)
  for leaf in leaves:  # one leaf after the other: their temporaries share one buffer
    if leaf is None:
      kept.append(None)
      continue
    one = lambda score, eligible, s=leaf.sparsity: _leaf_topk(score, s, eligible)
    mask = _xla.after(token, one, leaf.score, leaf.eligible,
                      big=_plan.size(leaf.score) >= _xla.BIG)
    token = _xla.token_of(mask)
    kept.append(mask)
  return _plan.unflatten(treedef, kept)


def _leaf_topk(score, sparsity, eligible):
  n = _plan.size(score)
  dtype = count_dtype(n)
  return _search.top_k([score], [eligible], keep_count(n, sparsity, dtype), count_dtype=dtype)[0]


def global_topk(scores, sparsity, *, where=None, previous=None, normalize=None):
  """Masks from one threshold across all selected leaves; the total kept count is exact.

  Over the ``N`` selected entries, exactly ``N - round(sparsity * N)`` are kept (fewer if
  ``previous`` keeps fewer). No leaves are concatenated and nothing is sorted: the threshold is
  found by counting, so sharded leaves stay sharded.

  Args:
    scores: pytree of floating arrays shaped like params.
    sparsity: one float in [0, 1] (may be traced).
    where: which leaves take part (default ``ndim >= 2``).
    previous: earlier masks; pruned entries stay pruned.
    normalize: ``None`` or a per-leaf normalisation applied before ranking so that layers of
      different scale compete fairly: ``"l1"``, ``"l2"``, ``"max"`` (divide by that norm of
      the leaf's absolute scores) or ``"mean"`` (divide by the mean absolute score).

  Returns:
    Masks like :func:`topk`. Ties are broken by leaf order, then row-major index.

  >>> import jax.numpy as jnp
  >>> scores = {"a": jnp.array([[1., 9.]]), "b": jnp.array([[8., 2.], [7., 3.]])}
  >>> masks = global_topk(scores, 0.5)
  >>> masks["a"].tolist(), masks["b"].tolist()
  ([[False, True]], [[True, False], [True, False]])
  """
  if not is_scalar_sparsity(sparsity):
    raise TypeError(
        "global_topk takes one sparsity for all selected leaves; got a pytree. For a sparsity "
        "per leaf use jaxprune.masks.topk, or select leaves with where=.")
  if normalize is not None and normalize not in _NORMALIZERS:
    raise ValueError(f"normalize must be None or one of {_NORMALIZERS}; got {normalize!r}.")
  sparsity = check_sparsity(sparsity, "")
  leaves, treedef = _plan.plan(scores, sparsity, where, previous)
  chosen = [leaf for leaf in leaves if leaf is not None]
  total = sum(_plan.size(leaf.score) for leaf in chosen)
  dtype = count_dtype(total)
  values = [_normalized(leaf.score, normalize) for leaf in chosen]
  kept = iter(_search.top_k(values, [leaf.eligible for leaf in chosen],
                    keep_count(total, sparsity, dtype), count_dtype=dtype))
  return _plan.unflatten(treedef, [None if leaf is None else next(kept) for leaf in leaves])


def _normalized(score, normalize):
  if normalize is None:
    return score
  x = jnp.abs(score.astype(jnp.promote_types(score.dtype, jnp.float32)))
  if normalize == "l1":
    norm = jnp.nansum(x)
  elif normalize == "l2":
    norm = jnp.sqrt(jnp.nansum(x * x))
  elif normalize == "max":
    norm = jnp.nanmax(x)
  else:
    norm = jnp.nanmean(x)
  tiny = jnp.finfo(x.dtype).tiny
  return score.astype(x.dtype) / jnp.maximum(norm, tiny)


def top_k(scores, eligible, k) -> list:
  """Exact top-``k`` over a list of score leaves (the selection every mask function uses).

  Low-level building block for transforms that count kept entries themselves (RigL's drop and
  grow, lottery rounds): keeps exactly ``min(k, #eligible)`` entries over all leaves together.

  Args:
    scores: a sequence of floating arrays (any shapes and float dtypes).
    eligible: a sequence with, per leaf, ``None`` (all eligible) or a bool array of its shape.
    k: number of entries kept in total (a Python int or a traced integer scalar).

  Returns:
    One bool array per leaf; ties broken by lower flat index (leaf order first), NaN lowest.

  >>> import jax.numpy as jnp
  >>> [m.tolist() for m in top_k([jnp.array([3., 1.]), jnp.array([2.])], [None, None], 2)]
  [[True, False], [True]]
  """
  scores = list(scores)
  eligible = list(eligible)
  total = sum(int(np.prod(x.shape, dtype=np.int64)) for x in scores)
  return _search.top_k(scores, eligible, k, count_dtype=count_dtype(total))
