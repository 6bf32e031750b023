"""Shared core of jaxprune: pytree paths, tree alignment, errors, common types.

Every area (``scores``, ``masks``, ``allocate``, ``schedules``, ``transforms``, ...) builds on
these helpers; they import nothing else from jaxprune.
"""

from jaxprune.core._errors import at_path, describe, listing
from jaxprune.core._masks import as_mask_leaf
from jaxprune.core._paths import flatten_with_paths, path_to_str, tree_paths
from jaxprune.core._sparsity import check_sparsity, is_static_number
from jaxprune.core._trees import (
    check_same_shape, is_array, is_floating, leaves_like, map_arrays)

__all__ = [
    "as_mask_leaf",
    "at_path",
    "check_same_shape",
    "check_sparsity",
    "describe",
    "flatten_with_paths",
    "is_array",
    "is_floating",
    "is_static_number",
    "leaves_like",
    "listing",
    "map_arrays",
    "path_to_str",
    "tree_paths",
]
