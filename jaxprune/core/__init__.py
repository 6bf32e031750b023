"""Shared core of jaxprune: pytree paths, tree alignment, errors, argument checks, placement.

Every area (``scores``, ``masks``, ``allocate``, ``schedules``, ``transforms``, ...) builds on
these helpers; they import nothing else from jaxprune. What several areas need lives here
(or is public in its area): no area imports another area's private module.

>>> import jax.numpy as jnp
>>> from jaxprune import core
>>> core.flatten_with_paths({"dense": {"kernel": jnp.ones((2, 2))}})[0]
['dense/kernel']
"""

from jaxprune.core._checks import Keywords, at_least_f32, check_int, check_key, count_dtype
from jaxprune.core._errors import at_path, describe, listing
from jaxprune.core._files import sync_dir
from jaxprune.core._jaxpr import CALL_PRIMITIVES, bind_equation, inner_jaxpr
from jaxprune.core._masks import as_mask_leaf, check_mask_leaf, mask_leaves
from jaxprune.core._paths import flatten_with_paths, key_to_str, path_to_str, tree_paths
from jaxprune.core._placement import mesh_of, replicated_like, sharded_like
from jaxprune.core._sparsity import check_sparsity, is_static_number
from jaxprune.core._tracing import is_concrete_array, is_tracer
from jaxprune.core._trees import (
    check_same_shape, is_array, is_floating, leaves_like, map_arrays)
from jaxprune.core._variables import is_variable, unwrap_variables

__all__ = [
    "CALL_PRIMITIVES",
    "Keywords",
    "as_mask_leaf",
    "at_least_f32",
    "at_path",
    "bind_equation",
    "check_int",
    "check_key",
    "check_mask_leaf",
    "check_same_shape",
    "count_dtype",
    "check_sparsity",
    "describe",
    "flatten_with_paths",
    "inner_jaxpr",
    "is_array",
    "is_concrete_array",
    "is_floating",
    "is_static_number",
    "is_tracer",
    "is_variable",
    "key_to_str",
    "leaves_like",
    "listing",
    "map_arrays",
    "mask_leaves",
    "mesh_of",
    "path_to_str",
    "replicated_like",
    "sharded_like",
    "sync_dir",
    "tree_paths",
    "unwrap_variables",
]
