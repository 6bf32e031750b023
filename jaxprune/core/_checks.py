"""Argument checks written once for every area: integers, PRNG keys, float casts, keywords."""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core._errors import describe
from jaxprune.core._tracing import is_tracer


def _who(context: str) -> str:
  return f"{context}: " if context else ""


def check_int(value, name: str, *, minimum: int = 0, context: str = "", arrays: bool = False):
  """A step number or count: a Python/numpy int ``>= minimum`` (returned as ``int``).

  With ``arrays=True``, an integer 0-d array is accepted too (e.g. an option traced by
  ``optax.inject_hyperparams``) and returned as it is, checked when it is concrete.

  >>> check_int(3, "every", minimum=1)
  3
  """
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{_who(context)}{name} must be an int >= {minimum}; got a bool {value!r}.")
  if isinstance(value, (numbers.Integral, np.integer)):
    if value < minimum:
      raise ValueError(f"{_who(context)}{name} must be >= {minimum}; got {value}.")
    return int(value)
  if arrays and hasattr(value, "dtype") and np.ndim(value) == 0 and jnp.issubdtype(
      value.dtype, jnp.integer):
    if not is_tracer(value) and int(value) < minimum:
      raise ValueError(f"{_who(context)}{name} must be >= {minimum}; got {int(value)}.")
    return value
  kind = "an int (or an integer 0-d array)" if arrays else "a Python int"
  raise TypeError(f"{_who(context)}{name} must be {kind} >= {minimum}; got {describe(value)}.")


def check_key(key, context: str = ""):
  """A PRNG key: a ``jax.random.key``, a legacy ``PRNGKey`` (uint32 ``(2,)``) or an int seed.

  Int seeds become ``jax.random.key(seed)``; ``None`` and anything else raise a ``TypeError``.

  >>> check_key(0).dtype
  key<fry>
  """
  if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
    return jax.random.key(int(key))
  dtype = getattr(key, "dtype", None)
  if dtype is not None and (
      jnp.issubdtype(dtype, jax.dtypes.prng_key)
      or (dtype == jnp.uint32 and tuple(np.shape(key)) == (2,))):
    return key
  hint = " It draws random numbers: pass key=jax.random.key(0)." if key is None else ""
  raise TypeError(f"{_who(context)}key must be a jax.random.key, a jax.random.PRNGKey or an int "
                  f"seed; got {describe(key)}.{hint}")


def at_least_f32(x):
  """``x`` in at least float32 (bfloat16/float16 products underflow); wider floats kept.

  >>> at_least_f32(jnp.ones(2, jnp.bfloat16)).dtype
  dtype('float32')
  """
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class Keywords(NamedTuple):
  """The keyword arguments a callable takes by name: how extras reach scores and selects.

  Rule (the same for every consumer): an extra argument given to ``tx.update(..., **extras)``
  is passed to a consumer that names it in its signature, or to every consumer that takes
  ``**kwargs``; a consumer's required keyword that is missing is a ``ValueError`` naming it.
  Found once, when the transform is built (``Keywords.of``), never while tracing.

  >>> kw = Keywords.of(lambda params, grads, scale=1.0: None, "score")
  >>> kw.pick({"grads": 1, "batch": 2})
  {'grads': 1}
  """

  name: str
  accepted: frozenset
  required: frozenset
  takes_all: bool

  @classmethod
  def of(cls, fn: Callable, name: str, *, positional: int = 1,
         reserved: tuple = ()) -> "Keywords":
    """The keywords of ``fn`` beyond its first ``positional`` arguments and ``reserved``."""
    label = f"{name} {_name(fn)}"
    try:
      parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and other callables without a signature
      return cls(label, frozenset(), frozenset(), True)
    kinds = inspect.Parameter
    rest = [p for p in parameters if p.kind in (kinds.POSITIONAL_OR_KEYWORD,
                                                kinds.KEYWORD_ONLY)][positional:]
    only = [p for p in parameters if p.kind == kinds.POSITIONAL_ONLY][positional:]
    if any(p.default is p.empty for p in only):
      raise TypeError(f"{label} has required positional-only arguments, which cannot be passed "
                      "by name; wrap it, e.g. lambda params, grads: fn(params, grads).")
    rest = [p for p in rest if p.name not in reserved]
    return cls(label, frozenset(p.name for p in rest),
               frozenset(p.name for p in rest if p.default is p.empty),
               any(p.kind == kinds.VAR_KEYWORD for p in parameters))

  def pick(self, extras: dict) -> dict[str, Any]:
    """The extras this consumer takes; raises when one it requires is missing."""
    missing = sorted(self.required - set(extras))
    if missing:
      raise ValueError(
          f"{self.name} needs the argument(s) {missing}, which were not passed to tx.update. "
          f"Pass them as keyword arguments: tx.update(updates, opt_state, params, "
          f"{', '.join(f'{m}={m}' for m in missing)}). Extra arguments given: {sorted(extras)}.")
    if self.takes_all:
      return dict(extras)
    return {k: v for k, v in extras.items() if k in self.accepted}


def _name(fn) -> str:
  func = getattr(fn, "func", None)  # functools.partial
  if func is not None:
    return f"partial({_name(func)})"
  return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def count_dtype(total: int):
  """The dtype of entry counts over ``total`` entries: int32, or int64 from 2**31 (needs x64).

  >>> count_dtype(10)
  <class 'jax.numpy.int32'>
  """
  if total < 2**31 - 1:
    return jnp.int32
  if jax.config.jax_enable_x64:  # pyright: ignore[reportAttributeAccessIssue]
    return jnp.int64
  raise ValueError(
      f"the selected leaves hold {total} entries, more than int32 counts allow; enable 64-bit "
      "counts with jax.config.update('jax_enable_x64', True).")
