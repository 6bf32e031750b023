"""Resetting entries of any optax optimizer state (e.g. the moments of regrown weights).

Which parts of a state are per-parameter is decided by the optimizer itself, with optax's
param-shaped traversal (:func:`optax.tree_utils.tree_map_params`, which runs ``tx.init`` on a
placeholder): every copy of the params tree inside the state (Adam's ``mu``/``nu``, momentum
traces, Lion's ``mu``, ``optax.MultiSteps``' accumulated gradients, the states under
``optax.masked``/``optax.partition``, schedule-free's ``z``, ...). No list of known state types
and no guess from shapes. In each such copy, a selected entry takes the value it holds in a
freshly initialised state (``tx.init(params)``: 0 for moments, the initial accumulator of
``optax.adagrad``); step counts, hyperparameters and ``MaskedNode`` placeholders are left alone.

Statistics that are per-parameter but not per-entry (``optax.adafactor``'s factored row and
column second moments, whose shapes differ from the param's) are shared by a whole row or
column and are left as they are. :func:`params_like_paths` lists what is reset elementwise,
to check an optimizer once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxprune.core import (
    at_path, describe, flatten_with_paths, is_array, leaves_like)

_OTHER = -1  # the marker of state leaves that are not per-parameter


def _markers(tx, opt_state, params) -> list:
  """Per leaf of ``opt_state``: the index of its params leaf, or ``_OTHER``."""
  if not callable(getattr(tx, "init", None)):
    raise TypeError(f"reset_optimizer_state: tx must be the optax optimizer (or MultiSteps) whose "
                    f"state is reset; got {describe(tx)}.")
  _, p_leaves, treedef = flatten_with_paths(params)
  if not p_leaves:
    raise ValueError("params have no leaves: there is nothing to reset. Pass the params the "
                     "optimizer state was built for.")
  masked = lambda x: isinstance(x, optax.MaskedNode)
  try:
    markers = optax.tree_utils.tree_map_params(
        tx, lambda x, i: x if masked(x) else i, opt_state, treedef.unflatten(range(len(p_leaves))),
        transform_non_params=lambda v: jax.tree.map(lambda _: _OTHER, v), is_leaf=masked)
    return jax.tree.structure(opt_state).flatten_up_to(markers)
  except (ValueError, TypeError) as err:
    raise ValueError(f"reset_optimizer_state: opt_state is not a state of tx for these params "
                     f"(optax.tree_utils.tree_map_params failed: {err}). Pass the optimizer "
                     "whose init built opt_state.") from None


def _resettable(x, index, p_leaves) -> bool:
  return (index != _OTHER and is_array(x)
          and tuple(x.shape) == tuple(getattr(p_leaves[index], "shape", ())))


def params_like_paths(tx, opt_state, params) -> list[str]:
  """Paths of the sub-trees of ``opt_state`` in which :func:`reset_optimizer_state` resets.

  Args:
    tx: the optimizer (``optax.GradientTransformation`` or ``optax.MultiSteps``).
    opt_state: its state.
    params: the params the state was built for (only structure and shapes are used).

  Returns:
    The path strings (``"0/mu"``-style) of the per-parameter copies holding at least one
    entry reset elementwise, in flattening order.

  >>> import jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones((2, 2))}
  >>> tx = optax.adam(1e-3)
  >>> params_like_paths(tx, tx.init(params), params)
  ['0/mu', '0/nu']
  """
  p_paths, p_leaves, _ = flatten_with_paths(params)
  s_paths, s_leaves, _ = flatten_with_paths(opt_state)
  out = []
  for path, x, i in zip(s_paths, s_leaves, _markers(tx, opt_state, params)):
    if _resettable(x, i, p_leaves):
      prefix = path[:len(path) - len(p_paths[i])].rstrip("/") if p_paths[i] else path
      if prefix not in out:
        out.append(prefix)
  return out


def reset_optimizer_state(tx, opt_state, params, entries, *, fresh=None):
  """Resets the selected entries of every per-parameter copy in ``opt_state``.

  Works for any optax optimizer (adam, adamw, lion, sgd with momentum, adafactor, chains,
  ``optax.masked``, ``optax.MultiSteps``, ``optax.inject_hyperparams``, ...); see the module
  docstring for the rule and its limits. Jit-able; dtypes, shapes and shardings are kept.

  Args:
    tx: the optimizer whose ``init`` built ``opt_state``.
    opt_state: the optimizer state.
    params: the params the state was built for (structure and shapes only).
    entries: a pytree like ``params``: a bool array per leaf to reset (True = reset), or
      ``None`` for leaves left untouched (e.g. the regrown entries of a RigL step).
    fresh: a state with the structure of ``opt_state`` that reset entries take their values
      from; default ``tx.init(params)``.

  Returns:
    The state with the same structure, the selected entries reset.

  Raises:
    ValueError/TypeError: ``entries`` does not align with ``params``, a leaf of it is not a
      bool array of that leaf's shape, or ``opt_state``/``fresh`` is not a state of ``tx``.

  >>> import jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones(3)}
  >>> tx = optax.adam(1e-3)
  >>> _, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  >>> state = reset_optimizer_state(tx, state, params, {"w": jnp.array([True, False, False])})
  >>> state[0].mu["w"].tolist(), int(state[0].count)
  ([0.0, 0.10000000149011612, 0.10000000149011612], 1)
  """
  paths, p_leaves, _ = flatten_with_paths(params)
  e_leaves = leaves_like(params, entries, name="entries")
  for path, p, e in zip(paths, p_leaves, e_leaves):
    if e is None:
      continue
    if not is_array(e) or e.dtype != jnp.bool_:
      raise TypeError(f"entries at {at_path(path)} must be a bool array (True = reset) or None; "
                      f"got {describe(e)}.")
    if not is_array(p) or tuple(e.shape) != tuple(p.shape):
      raise ValueError(f"entries at {at_path(path)} have shape {tuple(e.shape)} but params "
                       f"there are {describe(p)}. Build entries from masks of these params.")
  if all(e is None for e in e_leaves):
    return opt_state
  markers = _markers(tx, opt_state, params)
  s_leaves, s_def = jax.tree.flatten(opt_state)
  try:
    f_leaves = s_def.flatten_up_to(tx.init(params) if fresh is None else fresh)
  except (ValueError, TypeError) as err:
    raise ValueError(f"fresh must have the structure of opt_state (e.g. tx.init(params) for the "
                     f"same tx and params); they differ: {err}") from None
  out = [jnp.where(e_leaves[i], v.astype(x.dtype), x)
         if _resettable(x, i, p_leaves) and e_leaves[i] is not None else x
         for x, i, v in zip(s_leaves, markers, f_leaves)]
  return s_def.unflatten(out)
