"""Lottery tickets: iterative magnitude pruning with weight rewinding (Frankle & Carbin, 2019).

One round: train → prune a ``fraction`` of the **remaining** weights by magnitude (pruned
weights stay pruned) → rewind the kept weights to their values at initialisation (or at an
early step ``k``, "late rewinding", Frankle et al. 2020) → retrain with the masks fixed, e.g.
with ``jaxprune.static_sparse(inner, masks=masks)`` or ``jaxprune.keep_sparse(masks)``.
After ``r`` rounds about ``1 - (1 - fraction) ** r`` of the weights are pruned
(:func:`lottery_sparsity`).

>>> import jax, jax.numpy as jnp
>>> init = {"w": jax.random.normal(jax.random.key(0), (10, 10))}
>>> trained = jax.tree.map(lambda w: 2 * w, init)   # stands in for training
>>> masks = None
>>> for _ in range(3):
...   masks, params = lottery_round(trained, init, masks, 0.2)
>>> int(masks["w"].sum()), int((params["w"] != 0).sum())  # 100 -> 80 -> 64 -> 51
(51, 51)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import filters
from jaxprune.core import (
    at_path, check_same_shape, check_sparsity, count_dtype, describe, flatten_with_paths,
    is_array, is_floating, is_static_number, is_tracer, leaves_like, mask_leaves)
from jaxprune.masks import apply_masks, top_k

_SCOPES = ("leaf", "global")


def lottery_round(params, rewind_params, masks, fraction, *, where=None, scope: str = "leaf"):
  """One lottery-ticket round: prune ``fraction`` of the remaining weights, rewind the rest.

  Args:
    params: the trained params of this round (their magnitudes choose what is pruned).
    rewind_params: the params to rewind to: the initial ones (classic lottery ticket) or a
      copy taken at an early training step ``k`` (rewinding); same structure as ``params``.
    masks: the masks of the previous round (bool arrays, True = kept, ``None`` where not
      pruned), or ``None`` before the first round (dense).
    fraction: the fraction of each pruned leaf's remaining weights to prune in this round
      (``scope="leaf"``; a float, or a pytree of float|None per leaf, e.g. a smaller rate for
      the output layer), or of all remaining selected weights (``scope="global"``; a float).
    where: which leaves are pruned (default ``ndim >= 2``). A leaf with a mask in ``masks`` but
      not selected keeps its mask unchanged.
    scope: ``"leaf"`` (each leaf keeps exactly ``k - round(fraction * k)`` of its ``k``
      remaining weights; Frankle & Carbin's layer-wise rate) or ``"global"`` (one magnitude
      threshold over all selected leaves; the total count is exact).

  Returns:
    ``(new_masks, rewound_params)``: the masks after this round (a subset of ``masks``) and
    ``rewind_params`` with the pruned entries set to exactly 0. Retrain ``rewound_params``
    with the masks fixed for the next round.

  Raises:
    ValueError/TypeError: trees that do not align, a fraction outside [0, 1], an unknown scope.

  Jit-able. Counts are exact (rounded in float64 when ``masks`` are concrete, in float32 under
  ``jax.jit``, which is exact below 2**24 remaining weights per leaf).

  >>> import jax.numpy as jnp
  >>> trained = {"w": jnp.array([[4., -1.], [3., 2.]]), "b": jnp.ones(2)}
  >>> init = {"w": jnp.full((2, 2), 0.5), "b": jnp.zeros(2)}
  >>> masks, rewound = lottery_round(trained, init, None, 0.5)
  >>> masks["w"].tolist(), rewound["w"].tolist(), masks["b"]
  ([[True, False], [True, False]], [[0.5, 0.0], [0.5, 0.0]], None)
  """
  if scope not in _SCOPES:
    raise ValueError(f"lottery_round: scope must be one of {_SCOPES}; got {scope!r}.")
  paths, p_leaves, treedef = flatten_with_paths(params)
  r_leaves = leaves_like(params, rewind_params, name="rewind_params")
  m_leaves = ([None] * len(p_leaves) if masks is None
              else mask_leaves(params, masks, what="lottery_round: masks"))
  chosen = filters.select(params, where)
  for path, p, r, m, c in zip(paths, p_leaves, r_leaves, m_leaves, chosen):
    if c or m is not None:
      _check_leaf(path, p, r, m)
  fractions = _fractions(params, fraction, chosen, scope)

  selected = [i for i, c in enumerate(chosen) if c]
  sizes = [int(np.prod(p_leaves[i].shape, dtype=np.int64)) for i in selected]
  if scope == "global":
    dtype = count_dtype(sum(sizes))
    remaining = sum(_remaining(m_leaves[i], n, dtype) for i, n in zip(selected, sizes))
    keeps = [remaining - _rounded(fractions[selected[0]], remaining, dtype)]
  else:
    keeps = []
    for i, n in zip(selected, sizes):
      dtype = count_dtype(n)
      remaining = _remaining(m_leaves[i], n, dtype)
      keeps.append(remaining - _rounded(fractions[i], remaining, dtype))
  kept = _keep_largest([p_leaves[i] for i in selected], [m_leaves[i] for i in selected], keeps,
                       scope == "global")
  new = list(m_leaves)
  for i, k in zip(selected, kept):
    new[i] = k
  new_masks = treedef.unflatten(new)
  return new_masks, apply_masks(rewind_params, new_masks)


def lottery_sparsity(fraction: float, rounds: int) -> float:
  """Approximate sparsity after ``rounds`` rounds pruning ``fraction`` of the remaining weights.

  ``1 - (1 - fraction) ** rounds`` (exact counts round per leaf and per round).

  >>> round(lottery_sparsity(0.2, 8), 3)
  0.832
  """
  fraction = check_sparsity(fraction, "", "fraction")
  if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
    raise ValueError(f"rounds must be an int >= 0; got {rounds!r}.")
  return 1.0 - (1.0 - float(fraction)) ** int(rounds)


def _fractions(params, fraction, chosen, scope):
  """One checked fraction per leaf (None for leaves not pruned)."""
  paths, _, _ = flatten_with_paths(params)
  if is_static_number(fraction) or (is_array(fraction) and fraction.ndim == 0):
    value = check_sparsity(fraction, "", "fraction")
    return [value if c else None for c in chosen]
  if scope == "global":
    raise TypeError("lottery_round(scope='global') takes one float fraction; got a pytree. Use "
                    "scope='leaf' for a fraction per leaf.")
  values = leaves_like(params, fraction, name="fraction")
  out = []
  for path, v, c in zip(paths, values, chosen):
    out.append(None if (v is None or not c) else check_sparsity(v, path, "fraction"))
  return [0.0 if (c and v is None) else v for v, c in zip(out, chosen)]


def _remaining(mask, n, dtype):
  if mask is None:
    return np.asarray(n, dtype) if isinstance(n, int) else jnp.asarray(n, dtype)
  if is_tracer(mask):
    return jnp.sum(mask, dtype=dtype)
  return np.asarray(np.sum(np.asarray(mask)), dtype)


def _rounded(fraction, remaining, dtype):
  """round(fraction * remaining), half to even: float64 when both are concrete."""
  if isinstance(fraction, float) and isinstance(remaining, (np.ndarray, np.generic)):
    return np.asarray(round(fraction * int(remaining)), dtype)
  product = jnp.asarray(fraction, jnp.float32) * jnp.asarray(remaining, jnp.float32)
  return jnp.round(product).astype(dtype)


@functools.partial(jax.jit, static_argnums=(3,))
def _keep_largest(values, eligible, keeps, single):
  """Top-|value| masks: one count for all leaves (``single``) or one count per leaf.

  One jitted call (compiled once per shapes) instead of hundreds of eager operations.
  """
  magnitudes = [jnp.abs(v) for v in values]
  if single:
    return top_k(magnitudes, eligible, keeps[0])
  return [top_k([v], [e], k)[0] for v, e, k in zip(magnitudes, eligible, keeps)]


def _check_leaf(path, p, r, m):
  if not is_floating(p):
    raise TypeError(f"lottery_round: params at {at_path(path)} must be a floating array to be "
                    f"pruned; got {describe(p)}. Exclude the leaf with where=.")
  if not is_array(r):
    raise TypeError(f"lottery_round: rewind_params at {at_path(path)} must be an array like the "
                    f"params; got {describe(r)}.")
  check_same_shape(path, p, r, a_name="params", b_name="rewind_params")
