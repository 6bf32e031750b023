"""Per-leaf sparsity from one target (pure Python on shapes; no tracing).

Each function returns a pytree shaped like ``params`` with a float sparsity for each pruned
leaf and ``None`` for the others; pass it as ``sparsity=`` to :mod:`jaxprune.masks`.

>>> import numpy as np, jaxprune
>>> jaxprune.allocate.uniform({"w": np.zeros((3, 3)), "b": np.zeros(3)}, 0.5)
{'b': None, 'w': 0.5}
"""

from jaxprune.allocate._allocate import custom, erk, uniform

__all__ = ["custom", "erk", "uniform"]
