"""Sparsity schedules: plain ``step -> sparsity`` callables, jit-friendly (traced step).

Pass them as ``sparsity=`` to :func:`jaxprune.prune`; any optax schedule works there as well.

>>> import jaxprune
>>> schedule = jaxprune.schedules.polynomial(0.9, begin=100, end=1000)
>>> float(schedule(0)), float(schedule(1000))
(0.0, 0.8999999761581421)
"""

from jaxprune.schedules._schedules import Schedule, constant, iterative, one_shot, polynomial

__all__ = ["Schedule", "constant", "iterative", "one_shot", "polynomial"]
