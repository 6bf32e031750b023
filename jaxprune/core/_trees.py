"""Aligning pytrees leaf by leaf, with errors that name the path where they differ."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxprune.core._errors import at_path, describe, listing
from jaxprune.core._paths import flatten_with_paths
from jaxprune.core._variables import unwrap_variables


def is_array(x) -> bool:
  """True for arrays (jax, numpy, tracers, ``ShapeDtypeStruct``): leaves that can be pruned.

  >>> import numpy as np
  >>> is_array(np.ones(2)), is_array(2.0)
  (True, False)
  """
  return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) or (
      hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim"))


def is_floating(x) -> bool:
  """True for arrays of a floating dtype (bfloat16 and float16 included).

  >>> import jax.numpy as jnp
  >>> is_floating(jnp.ones(2, jnp.bfloat16)), is_floating(jnp.ones(2, int))
  (True, False)
  """
  return is_array(x) and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)


def leaves_like(reference, other, *, name: str, ref_name: str = "params") -> list[Any]:
  """Flattens ``other`` up to the structure of ``reference``.

  Returns one entry of ``other`` per leaf of ``reference`` (``None`` entries of ``other`` are
  kept as ``None``). Raises a ``ValueError`` naming the first path where the trees differ.
  flax nnx Variables (``nnx.Param``, the ``OptVariable`` leaves of ``nnx.Optimizer`` states)
  are compared by the values they hold, so masks taken from an ``nnx.Optimizer`` align with
  ``nnx.state(model, nnx.Param)``.

  >>> import jax.numpy as jnp
  >>> leaves_like({"w": jnp.ones(2), "b": jnp.ones(1)}, {"w": True, "b": None}, name="masks")
  [None, True]
  """
  _, _, treedef = flatten_with_paths(unwrap_variables(reference))
  try:
    return treedef.flatten_up_to(unwrap_variables(other))
  except (ValueError, TypeError) as err:
    raise ValueError(_mismatch_message(reference, other, name, ref_name, err)) from None


def _mismatch_message(reference, other, name, ref_name, err) -> str:
  ref_paths = flatten_with_paths(reference)[0]
  other_paths = flatten_with_paths(other, is_leaf=lambda x: x is None)[0]
  missing = [p for p in ref_paths if p not in set(other_paths)]
  extra = [p for p in other_paths if p not in set(ref_paths)]
  detail = ""
  if missing:
    detail += f" Paths in {ref_name} but not in {name}: {listing(missing)}."
  if extra:
    detail += f" Paths in {name} but not in {ref_name}: {listing(extra)}."
  return (f"{name} must have the same tree structure as {ref_name} ({ref_name} leaves may be "
          f"replaced by None), but they differ: {err}.{detail} Build {name} from {ref_name}, "
          f"e.g. with jax.tree.map over {ref_name}.")


def check_same_shape(path: str, a, b, *, a_name: str, b_name: str) -> None:
  """Raises a ``ValueError`` when two aligned leaves have different shapes.

  >>> import jax.numpy as jnp
  >>> check_same_shape("w", jnp.ones(2), jnp.ones(3), a_name="params", b_name="scores")
  Traceback (most recent call last):
  ValueError: scores at 'w' has shape (3,) but params there has shape (2,)...
  """
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(
        f"{b_name} at {at_path(path)} has shape {tuple(b.shape)} but {a_name} there has shape "
        f"{tuple(a.shape)}: got {describe(b)}. Compute {b_name} from the same {a_name} tree.")


def map_arrays(fn, tree, *rest, names=()):
  """Applies ``fn(path, leaf, *aligned)`` to the array leaves of ``tree``; others become None.

  ``rest`` are trees aligned to ``tree`` (see :func:`leaves_like`), named by ``names`` in
  errors.

  >>> import jax.numpy as jnp
  >>> map_arrays(lambda path, x: x.sum(), {"w": jnp.ones((2, 2)), "n": "relu"})
  {'n': None, 'w': Array(4., dtype=float32)}
  """
  paths, leaves, treedef = flatten_with_paths(tree)
  aligned = [leaves_like(tree, other, name=name) for other, name in zip(rest, names)]
  out = [fn(p, x, *others) if is_array(x) else None
         for p, x, *others in zip(paths, leaves, *aligned)]
  return treedef.unflatten(out)
