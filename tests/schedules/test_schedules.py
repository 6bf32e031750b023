"""Sparsity schedules: values against hand-computed references, jit, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from jaxprune import schedules


def _poly_reference(t, final, begin, end, initial, power):
  """Zhu & Gupta (2017), eq. (1), in float64 with the clamping outside [begin, end]."""
  t = min(max(t, begin), end)
  return final + (initial - final) * (1.0 - (t - begin) / (end - begin)) ** power


@settings(max_examples=40, deadline=None)
@given(final=st.floats(0, 1, width=32, allow_subnormal=False), initial=st.floats(0, 1, width=32, allow_subnormal=False), begin=st.integers(0, 500),
       span=st.integers(1, 5000), power=st.sampled_from([1, 2, 3, 0.5, 4.5]),
       steps=st.lists(st.integers(0, 7000), min_size=1, max_size=8))
def test_polynomial_matches_formula(final, initial, begin, span, power, steps):
  initial, final = sorted((initial, final))  # decreasing ramps are refused (issue 10.9)
  schedule = schedules.polynomial(final, begin, begin + span, initial=initial, power=power)
  got = jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32))
  want = [_poly_reference(t, final, begin, begin + span, initial, power) for t in steps]
  np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=2e-6)
  assert got.dtype == jnp.float32
  assert np.all((np.asarray(got) >= 0) & (np.asarray(got) <= 1))


@settings(max_examples=30, deadline=None)
@given(final=st.floats(0, 1, width=32, allow_subnormal=False), begin=st.integers(0, 100), span=st.integers(1, 1000))
def test_polynomial_is_monotone_and_hits_endpoints(final, begin, span):
  end = begin + span
  schedule = schedules.polynomial(final, begin, end)
  steps = np.arange(0, end + 50)
  values = np.asarray(jax.jit(jax.vmap(schedule))(steps))
  assert np.all(np.diff(values) >= 0)
  assert values[0] == 0.0 and values[begin] == 0.0
  assert values[end] == np.float32(final) and values[-1] == np.float32(final)
  assert schedule.final == final


def test_polynomial_hand_values():
  s = schedules.polynomial(0.8, begin=10, end=20, initial=0.2, power=1)
  assert [round(float(s(t)), 6) for t in (0, 10, 15, 20, 30)] == [0.2, 0.2, 0.5, 0.8, 0.8]
  cubic = schedules.polynomial(1.0, begin=0, end=4)
  # 1 - (1 - t/4)^3 at t = 1, 2, 3: 37/64, 56/64, 63/64.
  assert [float(cubic(t)) for t in (1, 2, 3)] == [37 / 64, 56 / 64, 63 / 64]


def test_constant_and_one_shot():
  c = schedules.constant(0.3)
  assert float(jax.jit(c)(jnp.int32(12345))) == np.float32(0.3)
  assert c.final == 0.3
  s = schedules.one_shot(0.7, at=5)
  values = jax.vmap(s)(jnp.arange(10))
  assert values.tolist() == [0.0] * 5 + [float(np.float32(0.7))] * 5
  assert s.final == 0.7


@pytest.mark.parametrize("per_round,every,rounds,begin", [(0.2, 100, 5, 0), (0.5, 7, 3, 11),
                                                          (1.0, 1, 1, 0)])
def test_iterative_rounds(per_round, every, rounds, begin):
  s = schedules.iterative(per_round, every=every, rounds=rounds, begin=begin)
  steps = np.arange(0, begin + every * (rounds + 2))
  got = np.asarray(jax.jit(jax.vmap(s))(steps))
  done = np.clip((steps - begin) // every, 0, rounds)
  done = np.where(steps < begin, 0, done)
  want = 1.0 - (1.0 - per_round) ** done
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert s.final == pytest.approx(1.0 - (1.0 - per_round) ** rounds)


def test_optax_schedules_are_plain_callables_too():
  # The same contract: step -> sparsity, traced step.
  s = optax.linear_schedule(0.0, 0.9, 100)
  assert float(jax.jit(s)(jnp.int32(50))) == pytest.approx(0.45)


@pytest.mark.parametrize("make,error,text", [
    (lambda: schedules.polynomial(1.5, 0, 10), ValueError, "[0, 1]"),
    (lambda: schedules.polynomial(0.5, 0, 10, initial=-0.1), ValueError, "[0, 1]"),
    (lambda: schedules.polynomial(0.5, 10, 10), ValueError, "end must be > begin"),
    (lambda: schedules.polynomial(0.5, 10, 5), ValueError, "end must be > begin"),
    (lambda: schedules.polynomial(0.5, -1, 5), ValueError, "begin must be >= 0"),
    (lambda: schedules.polynomial(0.5, 0, 10, power=0), ValueError, "power"),
    (lambda: schedules.polynomial(0.2, 0, 10, initial=0.8), ValueError, "final=0.2 is below"),
    (lambda: schedules.polynomial(0.5, 0.5, 10), TypeError, "begin must be an int"),
    (lambda: schedules.polynomial(True, 0, 10), TypeError, "bool"),
    (lambda: schedules.polynomial("0.9", 0, 10), TypeError, "final"),
    (lambda: schedules.constant(2.0), ValueError, "0.9 for 90%"),
    (lambda: schedules.one_shot(0.5, at=-3), ValueError, "at must be >= 0"),
    (lambda: schedules.iterative(0.2, every=0, rounds=3), ValueError, "every must be >= 1"),
    (lambda: schedules.iterative(0.2, every=10, rounds=0), ValueError, "rounds must be >= 1"),
    (lambda: schedules.iterative(float("nan"), every=10, rounds=2), ValueError, "[0, 1]"),
])
def test_validation(make, error, text):
  with pytest.raises(error, match=None) as info:
    make()
  assert text in str(info.value)
