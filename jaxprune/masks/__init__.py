"""Scores to masks: exact counts, deterministic ties, jit-able, sharding-preserving.

Every function takes a scores pytree (higher = kept) and returns a masks pytree: a bool array
(True = kept) per pruned leaf and ``None`` elsewhere. All accept ``previous=`` so that entries
pruned earlier stay pruned. Thresholds are found by counting (a search over the float bit
pattern), never by sorting or concatenating leaves; NaN scores rank lowest. Backends that flush
subnormal floats to zero (XLA on CPU does) rank subnormal scores equal to 0.

>>> import jax, jaxprune
>>> params = {"w": jax.random.normal(jax.random.key(0), (8, 8)), "b": jax.numpy.zeros(8)}
>>> masks = jaxprune.masks.topk(jaxprune.scores.magnitude(params), 0.75)
>>> int(masks["w"].sum()), masks["b"]
(16, None)
"""

from jaxprune.masks._apply import apply_masks
from jaxprune.masks._counts import keep_count
from jaxprune.masks._structured import blocks, channels, n_of_m
from jaxprune.masks._topk import global_topk, top_k, topk

__all__ = [
    "apply_masks",
    "blocks",
    "channels",
    "global_topk",
    "keep_count",
    "n_of_m",
    "top_k",
    "topk",
]
