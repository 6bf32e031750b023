"""Input checks shared by the one-shot layer kernels and the model-level driver."""

from __future__ import annotations

import numbers

import jax
import numpy as np

from jaxprune.core import at_path, check_sparsity, describe, is_tracer


def pattern(sparsity, n, m, *, path: str = "", fn: str = "oneshot") -> tuple[float, int | None,
                                                                             int | None]:
  """Validates ``sparsity`` or an ``n:m`` pattern; returns ``(sparsity, n, m)`` (static)."""
  if (n is None) != (m is None):
    raise ValueError(f"{fn}: give both n= and m= for N:M sparsity (e.g. n=2, m=4 keeps 2 of "
                     f"every 4); got n={n!r}, m={m!r}.")
  if n is not None:
    for name, v in (("n", n), ("m", m)):
      if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be a Python int; got {describe(v)}.")
    if m < 1 or not 0 <= n <= m:
      raise ValueError(f"{fn}: N:M needs 0 <= n <= m and m >= 1 (keep n of every m); got "
                       f"n={n}, m={m}. For 2:4 sparsity use n=2, m=4.")
    implied = 1.0 - n / m
    if sparsity is not None and not (isinstance(sparsity, numbers.Real)
                                     and abs(float(sparsity) - implied) < 1e-9):
      raise ValueError(f"{fn}: sparsity={sparsity!r} contradicts n={n}, m={m} (which prune "
                       f"{implied:g}); pass sparsity=None with n= and m=.")
    return implied, int(n), int(m)
  if sparsity is None:
    raise ValueError(f"{fn}: give sparsity= (a float in [0, 1]) or n= and m= for N:M.")
  if is_tracer(sparsity) or not isinstance(sparsity, (numbers.Real, np.ndarray, jax.Array)):
    raise TypeError(f"{fn}: sparsity must be a static float in [0, 1] (counts are fixed "
                    f"before tracing); got {describe(sparsity)}.")
  return check_sparsity(sparsity, path, name=f"{fn}: sparsity"), None, None


def kernel(w, fn: str, path: str = ""):
  """``w`` must be a 2-D floating ``(in, out)`` array."""
  if not hasattr(w, "shape") or not hasattr(w, "dtype") or np.ndim(w) != 2:
    raise ValueError(f"{fn}: expected a 2-D kernel of shape (in, out) at {at_path(path)}; got "
                     f"{describe(w)}. Reshape higher-rank kernels to (in, out) first.")
  if not np.issubdtype(np.dtype(w.dtype), np.floating) and "float" not in str(w.dtype):
    raise TypeError(f"{fn}: kernel at {at_path(path)} must be floating; got dtype {w.dtype}.")


def groups(n, m, width: int, fn: str, path: str = "", block: int | None = None):
  """For N:M along the inputs: ``m`` divides the input width (and the column block)."""
  if m is None:
    return
  if width % m:
    raise ValueError(f"{fn}: N:M groups of m={m} run along the {width} inputs of the kernel at "
                     f"{at_path(path)}, and {m} does not divide {width}. Exclude that layer "
                     "(where=) or choose an m that divides its input width.")
  if block is not None and block % m:
    raise ValueError(f"{fn}: block={block} must be a multiple of m={m} for N:M (groups may not "
                     "straddle column blocks); e.g. block=128 with m=4 or m=8.")


def block_size(block, fn: str) -> int:
  if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 1:
    raise ValueError(f"{fn}: block must be a positive int (columns per lazy-update block, 128 "
                     f"by default); got {block!r}.")
  return int(block)


def nonneg(value, name: str, fn: str) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0:
    raise ValueError(f"{fn}: {name} must be a float >= 0; got {value!r}.")
  return float(value)


def bits(value, fn: str):
  if value is None:
    return None
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or not 2 <= int(value) <= 16):
    raise ValueError(f"{fn}: bits must be None (no quantisation) or an int in [2, 16]; got "
                     f"{value!r}.")
  return int(value)
