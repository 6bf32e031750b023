"""Sparsity by regularisation: proximal L1 and group-lasso optax transforms, and bridges.

``l1``, ``group_lasso`` (and ``l2`` for comparison) go **last** in an ``optax.chain`` and make
``optax.apply_updates`` land on the proximal point, so weights become exactly 0. Then
``masks_from_zeros`` gives masks for ``jaxprune.keep_sparse`` fine-tuning, and
``kept_channels`` the ``keep=`` of ``jaxprune.structure.prune`` for physical removal.

>>> import jax, jax.numpy as jnp, optax, jaxprune
>>> params = {"w": jnp.array([[0.5, -0.05], [2.0, 0.1]])}
>>> tx = optax.chain(optax.sgd(0.1), jaxprune.regularize.l1(0.2))
>>> updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
>>> jaxprune.regularize.masks_from_zeros(optax.apply_updates(params, updates))["w"].tolist()
[[True, False], [True, False]]
"""

from jaxprune.regularize._bridges import kept_channels, masks_from_zeros, zero_groups
from jaxprune.regularize._prox import RegularizeState, group_lasso, l1, l2

__all__ = ["RegularizeState", "group_lasso", "kept_channels", "l1", "l2", "masks_from_zeros",
           "zero_groups"]
