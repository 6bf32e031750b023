"""Sparsity schedules: plain ``step -> sparsity`` callables that work with a traced step.

Each schedule returns a float32 0-d array in [0, 1] and carries a ``final`` attribute (the
sparsity it ends at), which :func:`jaxprune.prune` uses to scale a per-leaf allocation.
Any optax schedule (``optax.linear_schedule(0.0, 0.9, 1000)``, ...) works where a schedule is
expected, too.
"""

from __future__ import annotations

import numbers
from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxprune.core import check_sparsity

Schedule = Callable[..., jnp.ndarray]


def _sparsity(value, name: str) -> float:
  if not (isinstance(value, numbers.Real) or (hasattr(value, "dtype") and np.ndim(value) == 0)):
    raise TypeError(f"{name} must be a float in [0, 1]; got {value!r}.")
  checked = check_sparsity(value, "", name)
  if not isinstance(checked, float):
    raise TypeError(f"{name} must be a static Python float in [0, 1] (schedules are built "
                    f"before tracing); got a traced value {checked!r}.")
  return checked


def _step(value, name: str, minimum: int = 0) -> int:
  if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
    raise TypeError(f"{name} must be an int (a step number); got {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}; got {value}.")
  return int(value)


def _as_step(step):
  """The step as a float32 scalar (exact for steps below 2**24)."""
  return jnp.asarray(step).astype(jnp.float32)


def _named(fn, name: str, final: float):
  fn.__name__ = fn.__qualname__ = name
  fn.final = final
  return fn


def polynomial(final: float, begin: int, end: int, initial: float = 0.0,
               power: float = 3.0) -> Schedule:
  """Gradual magnitude pruning (Zhu & Gupta, 2017): a polynomial ramp from ``initial`` to ``final``.

  ``s(t) = final + (initial - final) * (1 - (t - begin) / (end - begin)) ** power`` for
  ``begin <= t <= end``; ``initial`` before ``begin`` and ``final`` after ``end``. With the
  default ``power=3`` most weights are pruned early, while the network is still redundant.

  Args:
    final: sparsity reached at ``end``, in [0, 1], ``>= initial``.
    begin: first step of the ramp.
    end: step where ``final`` is reached (``end > begin``).
    initial: sparsity at ``begin`` (default 0).
    power: exponent of the ramp (``> 0``; 1 = linear).

  Returns:
    A callable ``step -> sparsity`` (float32 0-d array), jit-able with a traced step.

  >>> s = polynomial(0.9, begin=0, end=100)
  >>> [round(float(s(t)), 4) for t in (0, 50, 100, 200)]
  [0.0, 0.7875, 0.9, 0.9]
  """
  final = _sparsity(final, "final")
  initial = _sparsity(initial, "initial")
  begin = _step(begin, "begin")
  end = _step(end, "end")
  if end <= begin:
    raise ValueError(f"polynomial: end must be > begin (the ramp needs at least one step); got "
                     f"begin={begin}, end={end}.")
  if final < initial:
    raise ValueError(f"polynomial: final={final} is below initial={initial}; a decreasing "
                     "sparsity cannot be followed (pruned weights stay pruned). Use "
                     "final >= initial.")
  if isinstance(power, bool) or not isinstance(power, numbers.Real) or not power > 0:
    raise ValueError(f"polynomial: power must be a number > 0 (3 in Zhu & Gupta); got {power!r}.")
  power = float(power)

  def schedule(step):
    t = jnp.clip((_as_step(step) - begin) / jnp.float32(end - begin), 0.0, 1.0)
    value = final + (initial - final) * (1.0 - t) ** power
    return jnp.clip(value, min(initial, final), max(initial, final)).astype(jnp.float32)

  return _named(schedule, "polynomial", final)


def constant(sparsity: float) -> Schedule:
  """The same sparsity at every step.

  >>> float(constant(0.5)(1000))
  0.5
  """
  value = _sparsity(sparsity, "sparsity")

  def schedule(step):
    del step  # the same value at every step
    return jnp.full((), value, jnp.float32)

  return _named(schedule, "constant", value)


def one_shot(sparsity: float, at: int) -> Schedule:
  """0 before step ``at``, ``sparsity`` from ``at`` on (prune once, then fine-tune).

  >>> s = one_shot(0.8, at=10)
  >>> float(s(9)), float(s(10))
  (0.0, 0.800000011920929)
  """
  value = _sparsity(sparsity, "sparsity")
  at = _step(at, "at")

  def schedule(step):
    return jnp.where(jnp.asarray(step) >= at, jnp.float32(value), jnp.float32(0.0))

  return _named(schedule, "one_shot", value)


def iterative(per_round: float, every: int, rounds: int, begin: int = 0) -> Schedule:
  """Lottery-ticket style rounds: each round prunes ``per_round`` of the remaining weights.

  After ``r`` completed rounds the sparsity is ``1 - (1 - per_round) ** r``; round ``r`` completes
  at step ``begin + r * every`` and there are at most ``rounds`` of them. Use it with
  ``jaxprune.prune(..., every=every, begin=begin)`` so that masks are recomputed when a round
  completes.

  Args:
    per_round: fraction of the remaining weights pruned per round, in [0, 1].
    every: steps per round (``>= 1``).
    rounds: number of rounds (``>= 1``).
    begin: step where the first round starts.

  >>> s = iterative(0.5, every=100, rounds=3)
  >>> [float(s(t)) for t in (0, 99, 100, 250, 300, 10_000)]
  [0.0, 0.0, 0.5, 0.75, 0.875, 0.875]
  """
  per_round = _sparsity(per_round, "per_round")
  every = _step(every, "every", minimum=1)
  rounds = _step(rounds, "rounds", minimum=1)
  begin = _step(begin, "begin")
  kept = 1.0 - per_round

  def schedule(step):
    done = jnp.floor_divide(jnp.asarray(step) - begin, every)
    done = jnp.clip(done, 0, rounds).astype(jnp.float32)
    return (1.0 - jnp.float32(kept) ** done).astype(jnp.float32)

  return _named(schedule, "iterative", 1.0 - kept ** rounds)
