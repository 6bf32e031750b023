"""One-shot, layer-wise pruning of pretrained models from calibration data.

Per layer (a kernel ``w`` of shape ``(in, out)``): :func:`sparsegpt` (OBS reconstruction with
the layer's input Hessian ``2XᵀX/n``), :func:`wanda` (``|w|·‖x‖`` within each output unit)
and :func:`magnitude`; each returns ``(new_w, mask)`` with exact counts. Whole models:
:func:`prune` finds the linear layers of ``apply_fn`` from its jaxpr and prunes them in forward
order, each from its inputs propagated through the already pruned layers before it; :class:`OWL`
sets per-layer sparsities from activation outliers.

>>> import jax, jax.numpy as jnp, jaxprune
>>> w = jax.random.normal(jax.random.key(0), (8, 4))
>>> new_w, mask = jaxprune.oneshot.wanda(w, jnp.ones(8), n=2, m=4)
>>> mask.reshape(2, 4, 4).sum(axis=1).tolist()
[[2, 2, 2, 2], [2, 2, 2, 2]]
"""

from jaxprune.oneshot._layer import magnitude, sparsegpt, wanda
from jaxprune.oneshot._owl import OWL
from jaxprune.oneshot._prune import prune

__all__ = [
    "OWL",
    "magnitude",
    "prune",
    "sparsegpt",
    "wanda",
]
