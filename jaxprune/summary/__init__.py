"""Sparsity summaries of params or masks: jit-able fractions, tables, logger scalars, plots.

``sparsity`` and ``count_zeros`` work under ``jax.jit``; ``scalars``, ``table`` and ``log``
fetch host values; ``plot`` and ``plot_training`` need matplotlib and ``tensorboard`` needs
tensorboardX (the ``tensorboard`` extra).

>>> import jax.numpy as jnp, jaxprune
>>> float(jaxprune.summary.sparsity({"w": jnp.array([[0., 2.]])})["total"])
0.5
"""

from jaxprune.summary._log import log, tensorboard
from jaxprune.summary._plot import plot, plot_training
from jaxprune.summary._summary import count_zeros, scalars, sparsity, table

__all__ = ["count_zeros", "log", "plot", "plot_training", "scalars", "sparsity", "table",
           "tensorboard"]
