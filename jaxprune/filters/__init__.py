"""Filters that choose which leaves are pruned (``where=`` arguments everywhere in jaxprune).

>>> import numpy as np, jaxprune
>>> params = {"dense": {"kernel": np.ones((3, 4)), "bias": np.ones(4)}}
>>> jaxprune.filters.select(params)          # default: ndim >= 2
[False, True]
>>> jaxprune.filters.select(params, "bias")  # a regex searched in the path
[True, False]
"""

from jaxprune.filters._filters import (
    Filter,
    FilterLike,
    all_of,
    any_of,
    default,
    everything,
    min_ndim,
    min_size,
    not_,
    nothing,
    regex,
    resolve,
    select,
)

__all__ = [
    "Filter",
    "FilterLike",
    "all_of",
    "any_of",
    "default",
    "everything",
    "min_ndim",
    "min_size",
    "not_",
    "nothing",
    "regex",
    "resolve",
    "select",
]
