"""Optax gradient transformations for pruning during training.

``prune`` recomputes masks on a schedule inside jit; ``keep_sparse`` keeps fixed masks. Both go
last in an ``optax.chain`` and return updates that leave pruned weights exactly 0. ``rigl``,
``sparse_evolution`` (SET) and ``static_sparse`` (all :func:`sparse_training` with another
``grow`` score) wrap any optax optimizer for sparse training from step 0; ``lottery_round``
prunes and rewinds for lottery tickets. ``masks_of`` finds the current masks in any optimizer
state; ``masked_params`` applies them (for the forward pass of straight-through training).

**begin, every, end** mean the same in every transform: the update whose step count is ``t``
(the number of updates before it, 0 for the first) is a mask-update step when
``begin <= t <= end`` and ``(t - begin) % every == 0``; ``end`` is inclusive, ``None`` means no
end. ``prune`` starts at ``begin=0`` (its masks start dense); the sparse-training wrappers
default to ``begin=every`` (their initial mask is step 0's).

**Masks** are bool arrays (True = kept) where a leaf is pruned and ``None`` elsewhere; any
numeric array is accepted where masks are taken, non-zero = kept
(:func:`jaxprune.core.as_mask_leaf`).

>>> import jax.numpy as jnp, optax, jaxprune
>>> tx = optax.chain(optax.adamw(1e-3), jaxprune.transforms.prune(sparsity=0.5))
>>> state = tx.init({"w": jnp.ones((4, 4))})
>>> int(jaxprune.transforms.masks_of(state)["w"].sum())
16
"""

from jaxprune.transforms._dynamic import (
    SparseTrainState, grow_at_random, grow_by_gradient, rigl, sparse_evolution, sparse_training,
    static_sparse)
from jaxprune.transforms._keep import keep_sparse
from jaxprune.transforms._lottery import lottery_round, lottery_sparsity
from jaxprune.transforms._prune import prune
from jaxprune.transforms._prune_checks import MisplacedPruneWarning
from jaxprune.transforms._reset import params_like_paths, reset_optimizer_state
from jaxprune.transforms._sparse_setup import cosine_drop_fraction
from jaxprune.transforms._synflow import synflow_masks
from jaxprune.transforms._state import KeepSparseState, PruneState, masked_params, masks_of

__all__ = [
    "KeepSparseState",
    "MisplacedPruneWarning",
    "PruneState",
    "SparseTrainState",
    "cosine_drop_fraction",
    "grow_at_random",
    "grow_by_gradient",
    "keep_sparse",
    "lottery_round",
    "lottery_sparsity",
    "masked_params",
    "masks_of",
    "params_like_paths",
    "prune",
    "reset_optimizer_state",
    "rigl",
    "sparse_evolution",
    "sparse_training",
    "static_sparse",
    "synflow_masks",
]
