"""Kept counts are exactly n - round(s * n), also for a traced sparsity and huge leaves."""

from fractions import Fraction

import jax
import numpy as np
import pytest
from hypothesis import given, strategies as st

from jaxprune.masks import keep_count

_jit_count = jax.jit(keep_count, static_argnums=0)


def exact_f32_reference(n, s):
  """round-half-even of the exact product of float32(s) and n."""
  return n - round(Fraction(float(np.float32(s))) * n)


@given(st.integers(0, 2**31 - 2), st.floats(0, 1, allow_subnormal=False))
def test_traced_count_matches_exact_float32_product(n, s):
  got = int(_jit_count(n, s))
  want = exact_f32_reference(n, s)
  product = Fraction(float(np.float32(s))) * n
  near_half = abs(abs(product - int(product)) - Fraction(1, 2)) <= product * Fraction(2**-24)
  # within float32 resolution of a half the count rounds half to even (as Python does for the
  # decimal the user typed); elsewhere it is exactly the rounded product.
  assert got == want or (near_half and abs(got - want) == 1)


@pytest.mark.parametrize("n, s, kept", [(10, 0.25, 8), (5, 0.5, 3), (5, 0.7, 1), (3, 0.5, 1),
                                        (100, 0.425, 58), (38_597_376, 0.9, 3_859_738),
                                        (124_000_000, 0.5, 62_000_000), (7, 0.0, 7), (7, 1.0, 0)])
def test_static_and_traced_agree_with_python_round(n, s, kept):
  assert keep_count(n, s) == kept == n - round(s * n)
  # A traced sparsity is a float32: for huge n its exact product may differ from float64's.
  traced = int(_jit_count(n, s))
  assert traced == kept if n < 2**24 else traced == exact_f32_reference(n, s)
