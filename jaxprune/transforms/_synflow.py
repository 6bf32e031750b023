"""Iterative SynFlow pruning (Tanaka et al., 2020): prune, rescore, repeat, inside one loop.

The SynFlow score itself is :func:`jaxprune.scores.synflow`, the one implementation; this
module only iterates it with :func:`jaxprune.masks.global_topk` (scores and masks do not
import each other, transforms may import both).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune import filters, masks as masks_lib, scores as scores_lib
from jaxprune.core import check_int, check_sparsity


def synflow_masks(apply_fn, params, input_shape, sparsity, *, iterations: int = 100, where=None,
                  dtype=jnp.float32):
  """Iterative SynFlow: ``iterations`` rounds of scoring and global pruning to ``sparsity``.

  Round ``k`` prunes (globally over the leaves selected by ``where``) to the sparsity
  ``1 − (1 − sparsity)^(k / iterations)`` with scores recomputed on the pruned network, which
  avoids layer collapse. Runs as one ``lax.fori_loop`` (jit-able; ``sparsity`` may be traced).

  Args:
    apply_fn, params, input_shape, dtype: as in :func:`jaxprune.scores.synflow`.
    sparsity: final fraction of zeros among the selected entries.
    iterations: number of prune-rescore rounds (100 in the paper).
    where: which leaves are pruned (default ``ndim >= 2``).

  Returns:
    Masks like ``params``: bool arrays (True = kept) at the selected leaves, None elsewhere.

  >>> import jax
  >>> apply = lambda p, x: x @ p["a"] @ p["b"]
  >>> k1, k2 = jax.random.split(jax.random.key(0))
  >>> p = {"a": jax.random.normal(k1, (4, 8)), "b": jax.random.normal(k2, (8, 2))}
  >>> m = synflow_masks(apply, p, (1, 4), 0.5, iterations=10)
  >>> int(m["a"].sum() + m["b"].sum())
  24
  """
  iterations = int(check_int(iterations, "iterations", minimum=1, context="synflow_masks"))
  sparsity = check_sparsity(sparsity, "")
  paths = filters.select(params, where)
  leaves, treedef = jax.tree.flatten(params)
  init = treedef.unflatten([jnp.ones(jnp.shape(x), bool) if c else None
                            for x, c in zip(leaves, paths)])

  def round_(k, current):
    target = 1.0 - (1.0 - sparsity) ** ((k + 1.0) / iterations)
    target = jnp.where(k == iterations - 1, sparsity, target)  # the final round is exact
    scores = scores_lib.synflow(apply_fn, params, input_shape, masks=current, dtype=dtype)
    return masks_lib.global_topk(scores, target, where=where, previous=current)

  return jax.lax.fori_loop(0, iterations, round_, init)
