"""Construction-time pieces of :func:`jaxprune.transforms.sparse_training`: the random initial
masks, argument checks, and the drop-fraction schedules (RigL's cosine one is public).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import allocate as allocate_lib, filters, masks as masks_lib, scores as scores_lib
from jaxprune.core import at_path, check_sparsity, describe, flatten_with_paths, is_array
from jaxprune.core import is_static_number, leaves_like

_ALLOCATIONS = {"erk": allocate_lib.erk, "uniform": allocate_lib.uniform}


def cosine_drop_fraction(drop_fraction: float, end: int) -> Callable:
  """RigL's drop-fraction schedule: ``drop_fraction * (1 + cos(pi * min(t, end) / end)) / 2``.

  >>> schedule = cosine_drop_fraction(0.3, 100)
  >>> float(schedule(0)), round(float(schedule(50)), 4), float(schedule(100))
  (0.30000001192092896, 0.15, 0.0)
  """
  def schedule(step):
    t = jnp.minimum(jnp.asarray(step, jnp.float32), float(end)) / float(end)
    return jnp.float32(drop_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))

  return schedule


def random_masks(params, sparsity, alloc, where, key):
  """Exact-count random masks at ``sparsity`` (allocated over leaves when it is a float).

  Computed by one jitted call (compiled once per shapes and sparsities): eager top-k would
  dispatch hundreds of tiny operations.
  """
  paths, leaves, treedef = flatten_with_paths(params)
  if is_static_number(sparsity) and not isinstance(sparsity, bool):
    values = leaves_like(params, alloc(params, float(sparsity), where=where),
                         name="allocated sparsity")
  else:
    values = leaves_like(params, sparsity, name="sparsity")
    if where is not None:
      values = [v if c else None for v, c in zip(values, filters.select(params, where))]
  if all(v is None for v in values):
    raise ValueError("sparsity selects no leaf: every entry is None. Give a float for the "
                     "leaves to make sparse, e.g. jaxprune.allocate.uniform(params, 0.9).")
  static = []
  for path, x, v in zip(paths, leaves, values):
    if v is not None and not is_array(x):
      raise TypeError(f"sparsity at {at_path(path)} is {v!r} but params there are not an "
                      f"array: got {describe(x)}. Use None for leaves that are not sparse.")
    v = None if v is None else check_sparsity(v, path)
    if v is not None and not isinstance(v, float):
      raise TypeError(f"sparsity at {at_path(path)} must be a static float for the initial "
                      f"mask; got {describe(v)}.")
    static.append(v)
  shapes = tuple(tuple(np.shape(x)) if is_array(x) else None for x in leaves)
  return _random_masks_jit(key, treedef, shapes, tuple(static))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_masks_jit(key, treedef, shapes, sparsities):
  leaves = [jax.ShapeDtypeStruct(() if s is None else s, np.float32) for s in shapes]
  params = treedef.unflatten(leaves)
  return masks_lib.topk(scores_lib.random(params, key), treedef.unflatten(list(sparsities)))


def as_transformation(inner, name):
  if hasattr(inner, "gradient_transformation"):  # optax.MultiSteps and similar wrappers
    inner = inner.gradient_transformation()
  if not (callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
    raise TypeError(f"{name}: inner must be an optax GradientTransformation (e.g. "
                    f"optax.adam(1e-3)); got {describe(inner)}.")
  if not isinstance(inner, optax.GradientTransformation):
    inner = optax.GradientTransformation(inner.init, inner.update)
  return optax.with_extra_args_support(inner)


def check_allocate(allocate, name):
  if isinstance(allocate, str):
    if allocate not in _ALLOCATIONS:
      raise ValueError(f"{name}: allocate must be one of {sorted(_ALLOCATIONS)} or a callable "
                       f"(params, sparsity, where=...) -> pytree; got {allocate!r}.")
    return _ALLOCATIONS[allocate]
  if not callable(allocate):
    raise TypeError(f"{name}: allocate must be 'erk', 'uniform' or a callable such as "
                    f"jaxprune.allocate.erk; got {describe(allocate)}.")
  return allocate


def drop_fraction_schedule(drop_fraction, drop_schedule, end, name):
  if callable(drop_schedule):
    return drop_schedule
  if drop_schedule not in (None, "cosine", "constant"):
    raise ValueError(f"{name}: drop_schedule must be None/'cosine', 'constant' or a callable "
                     f"step -> fraction; got {drop_schedule!r}.")
  if isinstance(drop_fraction, bool) or not isinstance(drop_fraction, numbers.Real) or not (
      0.0 <= float(drop_fraction) <= 1.0) or math.isnan(float(drop_fraction)):
    raise ValueError(f"{name}: drop_fraction must be a float in [0, 1] (fraction of active "
                     f"weights replaced per mask update); got {drop_fraction!r}.")
  if drop_schedule == "constant":
    value = jnp.float32(drop_fraction)
    return lambda step: value
  if end is None:
    raise ValueError(f"{name}: the default cosine drop schedule decays to 0 at end=, which is "
                     "missing. Pass end= (the last step at which masks change; RigL uses 75% of "
                     "training), or drop_schedule='constant' or a callable.")
  return cosine_drop_fraction(float(drop_fraction), end)
