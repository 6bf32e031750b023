"""Scores over a parameter pytree: higher = more important = kept.

Every score returns a pytree shaped like ``params`` (``None`` for non-array leaves) and works
eagerly, under ``jax.jit`` and on sharded params.

Second-order scores take ``loss_fn(params, *args) -> scalar`` and reach curvature only through
Hessian-vector (forward-over-reverse) or Gauss-Newton-vector products; wrap a model and a loss
on its outputs in :class:`ModelLoss` for the Gauss-Newton/Fisher methods. As the ``score`` of
``jaxprune.prune`` (which calls ``score(params, **extras)`` with the extras given to
``tx.update``), bind the loss in a lambda:
``score=lambda params, batch, key: jaxprune.scores.obd(loss_fn, params, *batch, key=key)``.

>>> import jax.numpy as jnp, jaxprune
>>> jaxprune.scores.saliency({"w": jnp.array([1., -2.])}, {"w": jnp.array([3., 1.])})["w"]
Array([3., 2.], dtype=float32)
"""

from jaxprune.scores._diag import hessian_diag
from jaxprune.scores._first_order import gradient, magnitude, random, saliency
from jaxprune.scores.curvature import ModelLoss, ggn_vp, hvp
from jaxprune.scores._init import synflow
from jaxprune.scores._second_order import channel_obd, channel_trace, grasp, obd, taylor2
from jaxprune.scores._wanda import input_norms, wanda

__all__ = [
    "ModelLoss",
    "channel_obd",
    "channel_trace",
    "ggn_vp",
    "gradient",
    "grasp",
    "hessian_diag",
    "hvp",
    "input_norms",
    "magnitude",
    "obd",
    "random",
    "saliency",
    "synflow",
    "taylor2",
    "wanda",
]
