"""When masks change: the one meaning of ``begin``, ``every`` and ``end`` in every transform.

The update with step count ``t`` (the number of updates done before it, 0 for the first) is a
*mask-update step* when ``begin <= t <= end`` and ``(t - begin) % every == 0``: the first at
``begin``, then every ``every`` steps, the last at or before ``end`` (inclusive; ``None``: no
end).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from jaxprune.core import check_int, is_static_number


class UpdateSteps(NamedTuple):
  """``begin``, ``every`` and ``end`` of a transform, checked once; call it with a count.

  >>> steps = UpdateSteps.of(begin=2, every=3, end=8, context="prune")
  >>> [t for t in range(12) if bool(steps(t))], steps.sample()
  ([2, 5, 8], [2, 5, 8])
  """

  begin: Any
  every: Any
  end: Any

  @classmethod
  def of(cls, *, begin, every, end, context: str, check_order: bool = True) -> "UpdateSteps":
    """Checks the three options (static ints, or integer arrays under inject_hyperparams).

    ``end < begin`` is a ``ValueError`` (no mask would ever change) unless ``check_order`` is
    False (a defaulted ``begin``).
    """
    every = check_int(every, "every", minimum=1, context=context, arrays=True)
    begin = check_int(begin, "begin", minimum=0, context=context, arrays=True)
    if end is not None:
      end = check_int(end, "end", minimum=0, context=context, arrays=True)
      if (check_order and is_static_number(end) and is_static_number(begin)
          and int(end) < int(begin)):
        raise ValueError(f"{context}: end={int(end)} is before begin={int(begin)}; masks would "
                         "never be updated. Use end >= begin, or end=None for no end.")
    return cls(begin, every, end)

  def __call__(self, count):
    """True (a bool array) when ``count`` is a mask-update step."""
    count = jnp.asarray(count)
    is_update = (count >= self.begin) & ((count - self.begin) % self.every == 0)
    return is_update if self.end is None else is_update & (count <= self.end)

  def sample(self, limit: int = 2**20) -> list[int]:
    """Static update steps where a schedule is checked: ``begin``, ``end`` and ~40 between.

    The steps ``begin + k * every`` for ``k`` in 0, 1, 2, 3, 4, 6, 8, 12, 16, ... (up to
    ``end``, or to ``limit`` updates without an end), and the last update step. Empty when an
    option is traced.
    """
    if not all(is_static_number(x) for x in self if x is not None):
      return []
    begin, every = int(self.begin), int(self.every)
    last = limit if self.end is None else (int(self.end) - begin) // every
    ks, k = {0, last}, 1
    while k < last:
      ks.update((k, k + k // 2))
      k *= 2
    return [begin + k * every for k in sorted(ks) if k <= last]
