"""Validation of sparsity values (static floats are checked; traced ones are clipped later)."""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np

from jaxprune.core._errors import at_path, describe
from jaxprune.core._tracing import is_concrete_array


def is_static_number(x) -> bool:
  """True for Python/numpy numbers and concrete 0-d arrays (not tracers).

  >>> import jax.numpy as jnp
  >>> is_static_number(0.5), is_static_number(jnp.array(0.5))
  (True, True)
  """
  if isinstance(x, (numbers.Number, np.number)):
    return True
  if isinstance(x, np.ndarray):
    return x.ndim == 0
  if is_concrete_array(x):
    return x.ndim == 0
  return False


def check_sparsity(s, path: str, name: str = "sparsity"):
  """Validates one sparsity value; returns a Python float when static, else the 0-d array.

  >>> check_sparsity(0.5, "w")
  0.5
  """
  if isinstance(s, bool) or (hasattr(s, "dtype") and s.dtype == bool):
    raise TypeError(f"{name} at {at_path(path)} must be a float in [0, 1]; got a bool {s!r}.")
  if isinstance(s, complex) or (hasattr(s, "dtype") and jnp.issubdtype(s.dtype,
                                                                       jnp.complexfloating)):
    raise TypeError(f"{name} at {at_path(path)} must be a real float in [0, 1]; got a complex "
                    f"number {s!r}. Use e.g. 0.9 for 90% zeros.")
  if isinstance(s, str):
    raise TypeError(f"{name} at {at_path(path)} must be a float in [0, 1]; got the string "
                    f"{s!r}. Use e.g. 0.9 for 90% zeros.")
  if is_static_number(s):
    value = float(s)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
      raise ValueError(
          f"{name} at {at_path(path)} must be in [0, 1] (the fraction of entries set to zero); "
          f"got {value!r}. Use e.g. 0.9 for 90% zeros.")
    return value
  if not hasattr(s, "dtype") or getattr(s, "ndim", 1) != 0:
    raise TypeError(
        f"{name} at {at_path(path)} must be a float or a 0-d array; got {describe(s)}.")
  if not jnp.issubdtype(s.dtype, jnp.floating):
    raise TypeError(f"{name} at {at_path(path)} must be floating; got dtype {s.dtype}.")
  return s
