"""jaxprune: pruning and sparse training for JAX.

Scores (``jaxprune.scores``) turn into masks (``jaxprune.masks``) that ``apply_masks`` applies;
``jaxprune.allocate`` spreads one sparsity over layers and ``jaxprune.summary`` reports it.

>>> import jax, jaxprune
>>> params = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (4, 4)),
...                     "bias": jax.numpy.ones(4)}}
>>> masks = jaxprune.masks.topk(jaxprune.scores.magnitude(params), 0.5)
>>> pruned = jaxprune.apply_masks(params, masks)
>>> float(jaxprune.summary.sparsity(pruned)["total"])
0.5
"""

from jaxprune import (
    allocate, checkpoint, compensation, core, export, filters, masks, oneshot, quantize, regularize,
    schedules, scores, structure, summary, transforms)
from jaxprune.compensation import compensate
from jaxprune.masks import apply_masks
from jaxprune.quantize import dequantize, fake_quantize
from jaxprune.transforms import (
    keep_sparse, lottery_round, masked_params, masks_of, prune, reset_optimizer_state, rigl,
    sparse_evolution, static_sparse)

__version__ = "0.1.0"

__all__ = [
    "allocate",
    "apply_masks",
    "checkpoint",
    "compensate",
    "compensation",
    "core",
    "dequantize",
    "export",
    "fake_quantize",
    "filters",
    "keep_sparse",
    "lottery_round",
    "masked_params",
    "masks",
    "masks_of",
    "oneshot",
    "prune",
    "quantize",
    "regularize",
    "reset_optimizer_state",
    "rigl",
    "schedules",
    "scores",
    "sparse_evolution",
    "static_sparse",
    "structure",
    "summary",
    "transforms",
]
