"""OWL (Yin et al., 2024): outlier-weighted layer-wise sparsity, on top of any method.

A layer's outlier ratio ``D`` is the fraction of its Wanda scores ``|w_ij|·‖x_i‖`` (dense
model, calibration inputs) above ``M`` times the layer's mean score (with ``group=``, over the
scores of all the group's layers together, e.g. one transformer block as in the paper). Layers with more outliers
keep more: the ratios are rescaled linearly to ``[0, 2λ]`` and shifted so that the average
kept fraction is ``1 − sparsity``; ``sparsity_l = 1 − kept_l``.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxprune.oneshot import _trace


class OWL(NamedTuple):
  """OWL options for :func:`jaxprune.oneshot.prune` (``owl=OWL(...)`` or ``owl=True``).

  Attributes:
    lam: λ, half the spread of the per-layer sparsities (0.08 in the paper).
    m: M, the outlier threshold in multiples of the layer's mean score (5 in the paper).
    group: None (each linear layer its own group), or ``group(name) -> key``: layers with
      the same key (e.g. one transformer block, as in the paper) share one ratio and one
      sparsity. ``name`` is the kernel's path, with ``[i]`` per stacked slice.
    weighted: average the kept fractions weighted by layer size (default), so that the
      model's overall sparsity stays at the target when layers differ in size; False: the
      paper's plain mean over groups.

  >>> OWL().lam, OWL().m
  (0.08, 5.0)
  """
  lam: float = 0.08
  m: float = 5.0
  group: Callable | None = None
  weighted: bool = True


def options(owl, fn):
  if owl is None or owl is False:
    return None
  if owl is True:
    return OWL()
  if not isinstance(owl, OWL):
    raise TypeError(f"{fn}: owl must be None, True or jaxprune.oneshot.OWL(lam=..., m=...); "
                    f"got {owl!r}.")
  for name in ("lam", "m"):
    v = getattr(owl, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v) >= 0:
      raise ValueError(f"{fn}: OWL {name} must be a float >= 0; got {v!r}.")
  return owl


def outlier_ratio(w2d, norms, m):
  """Fraction of Wanda scores of a ``(in, out)`` kernel above ``m`` times their mean."""
  score = _scores(w2d, norms)
  return float(jnp.mean(score > m * jnp.mean(score)))


def _scores(w2d, norms):
  return jnp.abs(w2d.astype(jnp.float32)) * norms[:, None]


def allocate(opts, sites, names, norms, kernels, base):
  """Per-layer sparsities (list aligned with ``sites``) around the one target ``base``.

  A group's outlier ratio is taken over the Wanda scores of all its layers together, against
  ``M`` times their common mean (the paper's per-block ratio when groups are blocks).
  """
  target = base[0]
  if any(b != target for b in base):
    raise TypeError("oneshot.prune: OWL needs one float sparsity for all pruned layers.")
  keys = [names[i] if opts.group is None else opts.group(names[i]) for i in range(len(sites))]
  matrices = []
  for i, site in enumerate(sites):
    k = kernels[i][site.index] if site.index else kernels[i]
    matrices.append(_trace.matrix_of(k, site.contract)[0])
  total, size = {}, {}
  for key, w2d, nrm in zip(keys, matrices, norms):
    total[key] = total.get(key, 0.0) + float(jnp.sum(_scores(w2d, nrm)))
    size[key] = size.get(key, 0) + w2d.size
  above = {}
  for key, w2d, nrm in zip(keys, matrices, norms):
    mean = total[key] / size[key]
    above[key] = above.get(key, 0) + int(jnp.sum(_scores(w2d, nrm) > opts.m * mean))
  groups = list(size)
  d = np.array([above[g] / size[g] for g in groups])
  spread = d.max() - d.min()
  keep = np.zeros_like(d) if spread == 0 else (d - d.min()) / spread * 2 * opts.lam
  weights = np.array([size[g] for g in groups], float) if opts.weighted else np.ones(len(d))
  keep = keep - np.sum(keep * weights) / np.sum(weights) + (1.0 - target)
  sparsity = {g: float(np.clip(1.0 - k, 0.0, 1.0)) for g, k in zip(groups, keep)}
  return [sparsity[k] for k in keys]
