"""Structured masks: N:M groups, blocks and whole channels."""

from __future__ import annotations

import operator

import jax.numpy as jnp
import numpy as np

from jaxprune.core import at_path, count_dtype
from jaxprune.masks import _plan, _xla
from jaxprune.masks._counts import keep_count
from jaxprune.masks._search import top_k

_REDUCERS = ("sum", "mean", "max", "l2")


def n_of_m(scores, n: int, m: int, axis: int = -1, *, where=None, previous=None):
  """N:M masks: in every group of ``m`` consecutive entries along ``axis``, keep the ``n`` best.

  This is the layout of accelerator sparsity (2:4 on NVIDIA Ampere and later). Ties within a
  group keep the lower index; NaN ranks lowest; previously pruned entries stay pruned (a group
  then keeps ``min(n, #eligible)``).

  Args:
    scores: pytree of floating arrays shaped like params.
    n: entries kept per group, ``0 <= n <= m``.
    m: group size; the size of ``axis`` must be divisible by ``m`` in every selected leaf.
    axis: the axis along which groups run (default: last).
    where: which leaves are pruned (default ``ndim >= 2``).
    previous: earlier masks; pruned entries stay pruned.

  >>> import jax.numpy as jnp
  >>> n_of_m({"w": jnp.array([[1., 4., 3., 2.]])}, 2, 4)["w"].tolist()
  [[False, True, True, False]]
  """
  n, m = _check_n_m(n, m)
  leaves, treedef = _plan.plan(scores, 1.0 - n / m, where, previous)
  masks = [None if leaf is None else _leaf_n_of_m(leaf, n, m, axis) for leaf in leaves]
  return _plan.unflatten(treedef, masks)


def _check_n_m(n, m):
  for name, v in (("n", n), ("m", m)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise TypeError(f"n_of_m: {name} must be a Python int; got {v!r}.")
  if m < 1 or not 0 <= n <= m:
    raise ValueError(f"n_of_m needs 0 <= n <= m and m >= 1 (keep n of every m); got n={n}, "
                     f"m={m}. For 2:4 sparsity use n=2, m=4.")
  return int(n), int(m)


def _leaf_n_of_m(leaf, n, m, axis):
  x = leaf.score
  ax = _axis(leaf.path, x.ndim, axis)
  if x.shape[ax] % m:
    raise ValueError(
        f"n_of_m: axis {axis} of scores at {at_path(leaf.path)} has size {x.shape[ax]}, not "
        f"divisible by m={m} (shape {tuple(x.shape)}). Choose another axis= or exclude the "
        "leaf with where=.")
  eligible = jnp.ones(x.shape, bool) if leaf.eligible is None else leaf.eligible
  groups = lambda a: jnp.moveaxis(a, ax, -1).reshape(a.shape[:ax] + a.shape[ax + 1:] + (-1, m))
  v, e = groups(x), groups(eligible)
  vi, vj = v[..., :, None], v[..., None, :]  # rank of entry i: entries j that beat it
  ei, ej = e[..., :, None], e[..., None, :]
  nan_i, nan_j = jnp.isnan(vi), jnp.isnan(vj)
  better = (vj > vi) | (nan_i & ~nan_j)
  tied = (vj == vi) | (nan_i & nan_j)
  before = np.arange(m)[None, :] < np.arange(m)[:, None]  # j < i
  beats = (ej & ~ei) | ((ej == ei) & (better | (tied & before)))
  keep = (jnp.sum(beats, axis=-1) < n) & e
  moved = jnp.moveaxis(x, ax, -1).shape
  return jnp.moveaxis(keep.reshape(moved), -1, ax)


def _axis(path, ndim, axis):
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis {axis} is out of range for scores at {at_path(path)} with "
                     f"{ndim} dimensions.")
  return operator.index(axis) % ndim


def blocks(scores, sparsity, shape, *, where=None, previous=None, reduce="sum"):
  """Block masks: prune whole blocks of ``shape`` (aligned to the trailing dims) per leaf.

  A block's score is the ``reduce`` ("sum", "mean", "max" or "l2") of its entries; exactly
  ``b - round(sparsity * b)`` of a leaf's ``b`` blocks are kept. A block with any entry pruned
  in ``previous`` counts as eligible while any of its entries is kept; entries pruned there stay
  pruned.

  Args:
    scores: pytree of floating arrays.
    sparsity: float, traced scalar, or pytree of float|None (fraction of blocks pruned).
    shape: block shape, e.g. ``(4, 4)``; leading dims of a leaf get block size 1. Each
      blocked dim must be divisible by the block size.
    where, previous: as in :func:`jaxprune.masks.topk`.
    reduce: how entry scores combine into a block score.

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1., 1., 5., 5.], [1., 1., 5., 5.]])
  >>> blocks({"w": w}, 0.5, (2, 2))["w"].tolist()[0]
  [False, False, True, True]
  """
  block = _check_block(shape)
  _check_reduce(reduce)
  leaves, treedef = _plan.plan(scores, sparsity, where, previous)
  masks = [None if leaf is None else _leaf_blocks(leaf, block, reduce) for leaf in leaves]
  return _plan.unflatten(treedef, masks)


def _check_block(shape):
  if isinstance(shape, int):
    shape = (shape,)
  shape = tuple(shape)
  if not shape or not all(isinstance(b, (int, np.integer)) and b >= 1 for b in shape):
    raise ValueError(f"blocks: shape must be a tuple of positive ints, e.g. (4, 4); got {shape}.")
  return shape


def _check_reduce(reduce):
  if reduce not in _REDUCERS:
    raise ValueError(f"reduce must be one of {_REDUCERS}; got {reduce!r}.")


def _reduce(x, axes, reduce):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if reduce == "sum":
    return jnp.sum(x, axes)
  if reduce == "mean":
    return jnp.mean(x, axes)
  if reduce == "max":
    return jnp.max(x, axes)
  return jnp.sqrt(jnp.sum(x * x, axes))


def _leaf_blocks(leaf, block, reduce):
  x = leaf.score
  if len(block) > x.ndim:
    raise ValueError(f"blocks: block shape {block} has more dims than scores at "
                     f"{at_path(leaf.path)} with shape {tuple(x.shape)}.")
  full = (1,) * (x.ndim - len(block)) + block
  if any(d % b for d, b in zip(x.shape, full)):
    raise ValueError(
        f"blocks: scores at {at_path(leaf.path)} have shape {tuple(x.shape)}, not divisible "
        f"into blocks of {block}. Pick a block shape dividing the trailing dims or exclude the "
        "leaf with where=.")
  split = tuple(s for d, b in zip(x.shape, full) for s in (d // b, b))
  inner = tuple(range(1, 2 * x.ndim, 2))
  block_scores = _reduce(x.reshape(split), inner, reduce)
  eligible = None if leaf.eligible is None else jnp.any(leaf.eligible.reshape(split), inner)
  kept = _keep_top(block_scores, leaf.sparsity, eligible)
  expanded = jnp.broadcast_to(jnp.expand_dims(kept, inner), split).reshape(x.shape)
  return _xla.anchored(expanded, x) if leaf.eligible is None else expanded & leaf.eligible


def _keep_top(values, sparsity, eligible):
  n = _plan.size(values)
  dtype = count_dtype(n)
  return top_k([values], [eligible], keep_count(n, sparsity, dtype), count_dtype=dtype)[0]


def channels(scores, sparsity, axis=-1, *, where=None, previous=None, reduce="sum"):
  """Channel masks: prune whole slices along ``axis`` (e.g. output channels of a kernel).

  A channel's score is the ``reduce`` ("sum", "mean", "max" or "l2") of its entries over all
  other axes; for Hessian-diagonal scores, "sum" gives the Hessian trace per channel. Exactly
  ``c - round(sparsity * c)`` of ``c`` channels are kept per leaf.

  Args:
    scores: pytree of floating arrays.
    sparsity: float, traced scalar, or pytree of float|None (fraction of channels pruned).
    axis: the channel axis, or a tuple of axes whose index combinations are the channels
      (default: last axis, the output features of flax/optax-style kernels).
    where, previous: as in :func:`jaxprune.masks.topk`.
    reduce: how entry scores combine into a channel score.

  >>> import jax.numpy as jnp
  >>> channels({"w": jnp.array([[1., 5., 2.], [1., 5., 2.]])}, 1/3)["w"].tolist()[0]
  [False, True, True]
  """
  _check_reduce(reduce)
  leaves, treedef = _plan.plan(scores, sparsity, where, previous)
  masks = [None if leaf is None else _leaf_channels(leaf, axis, reduce) for leaf in leaves]
  return _plan.unflatten(treedef, masks)


def _leaf_channels(leaf, axis, reduce):
  x = leaf.score
  kept_axes = tuple(sorted({_axis(leaf.path, x.ndim, a)
                            for a in (axis if isinstance(axis, (tuple, list)) else (axis,))}))
  other = tuple(a for a in range(x.ndim) if a not in kept_axes)
  channel_scores = _reduce(x, other, reduce)
  eligible = None if leaf.eligible is None else jnp.any(leaf.eligible, other)
  kept = _keep_top(channel_scores, leaf.sparsity, eligible)
  expanded = jnp.broadcast_to(jnp.expand_dims(kept, other), x.shape)
  return _xla.anchored(expanded, x) if leaf.eligible is None else expanded & leaf.eligible
