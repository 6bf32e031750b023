"""How many entries a leaf keeps at a sparsity: exactly ``n - round(s * n)``."""

from __future__ import annotations

import jax.numpy as jnp


def keep_count(n: int, s, count_dtype=jnp.int32):
  """Number of entries kept out of ``n`` at sparsity ``s``: ``n - round(s * n)``.

  Python's ``round`` (half to even) on ``s * n`` computed in float64 when ``s`` is static; for a
  traced ``s`` the product is computed in float32 with an error-free transformation so that the
  count stays exact for large ``n`` (ties within float32 resolution of ``s`` round half to even).
  Traced values outside [0, 1] are clipped.

  >>> keep_count(10, 0.25), keep_count(10, 0.35)
  (8, 6)
  """
  if isinstance(s, float):
    return n - int(round(s * n))
  s = jnp.clip(jnp.asarray(s, jnp.float32), 0.0, 1.0)
  base, offset = _round_product(s, n)
  return jnp.asarray(n, count_dtype) - base.astype(count_dtype) - offset.astype(count_dtype)


def _split(a):
  """Dekker split of a float32 into two halves with at most 12 significant bits each."""
  c = a * jnp.float32(4097.0)
  hi = c - (c - a)
  return hi, a - hi


def _round_product(s, n: int):
  """round_half_even(s * n) for a float32 scalar ``s`` and a static int ``n``.

  Returned as ``(base, offset)``, two float32 integers whose sum is the result: ``base`` may be
  above 2**24 where float32 cannot hold ``base + offset`` exactly.
  """
  # n = n_hi + n_lo, both exactly representable in float32.
  n_hi_int = (n >> 8) << 8 if n >= (1 << 24) else n
  n_hi, n_lo = jnp.float32(n_hi_int), jnp.float32(n - n_hi_int)
  p1 = s * n_hi
  s_hi, s_lo = _split(s)
  a_hi, a_lo = _split(n_hi)
  err1 = ((s_hi * a_hi - p1) + s_hi * a_lo + s_lo * a_hi) + s_lo * a_lo  # s*n_hi = p1 + err1
  p2 = s * n_lo  # n_lo < 256: small product, its rounding error is far below 0.5
  base = jnp.round(p1)
  frac = ((p1 - base) + err1) + p2  # s*n = base + frac (up to float32 rounding of frac)
  whole = jnp.floor(frac + 0.5)
  rest = frac - whole  # s*n ~ base + whole + rest, rest in [-0.5, 0.5]
  # Within float32 resolution of s, a product this close to a half is a tie: half to even.
  tol = jnp.minimum(jnp.float32(0.01), jnp.abs(p1 + p2) * jnp.float32(1.01 * 2.0**-24))
  is_half = jnp.abs(jnp.abs(rest) - 0.5) <= tol
  other = jnp.where(rest < 0, whole - 1.0, whole + 1.0)
  parity = jnp.mod(jnp.mod(base, 2.0) + jnp.mod(whole, 2.0), 2.0)
  even = jnp.where(parity == 0.0, whole, other)
  return base, jnp.where(is_half, even, whole)
