"""Sparsity summaries of params or masks: jit-able fractions, tables, logger scalars, plots.

>>> import jax.numpy as jnp, jaxprune
>>> float(jaxprune.summary.sparsity({"w": jnp.array([[0., 2.]])})["total"])
0.5
"""

from jaxprune.summary._summary import plot, scalars, sparsity, table

__all__ = ["plot", "scalars", "sparsity", "table"]
