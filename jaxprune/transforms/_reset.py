"""Resetting entries of any optax optimizer state (e.g. the moments of regrown weights).

The rule, which needs no list of known optimizer state types: every sub-tree of the state
whose **tree structure equals the params' structure and whose array leaves have the params'
shapes** holds per-entry values (Adam's ``mu``/``nu``, momentum traces, Lion's ``mu``,
``optax.MultiSteps`` accumulated gradients, EMA/lookahead copies of the params, ...). In each
such sub-tree the selected entries are set to exactly 0; everything else (step counts,
hyperparameters, ``EmptyState``) is left alone.

Limits: per-parameter state that is not stored elementwise in the params' structure is not
touched, e.g. factored second moments (``optax.adafactor``'s row/column statistics) or states
of ``optax.masked``/``optax.partition``, which replace some leaves by ``MaskedNode``. When
params are a single array, every state array of that exact shape counts as params-like.
:func:`params_like_paths` lists what would be reset, to check an optimizer once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core import (
    at_path, describe, flatten_with_paths, is_array, leaves_like, path_to_str)


def _matcher(params):
  """A predicate telling whether a state node is shaped like ``params``."""
  p_leaves, p_treedef = jax.tree_util.tree_flatten(params)
  if p_treedef.num_leaves == 0:
    raise ValueError("params have no leaves: there is nothing to reset. Pass the params the "
                     "optimizer state was built for.")
  p_shapes = [tuple(np.shape(x)) for x in p_leaves]

  def matches(node) -> bool:
    leaves, treedef = jax.tree_util.tree_flatten(node)
    return (treedef == p_treedef and all(is_array(x) for x in leaves)
            and [tuple(x.shape) for x in leaves] == p_shapes)

  return matches


def params_like_paths(opt_state, params) -> list[str]:
  """Paths of the sub-trees of ``opt_state`` that :func:`reset_optimizer_state` resets.

  Use it once to check what is reset for an optimizer (empty list: nothing would be).

  Args:
    opt_state: any optimizer state (nested tuples, NamedTuples, dicts, ...).
    params: the params the state was built for (only structure and shapes are used).

  Returns:
    The path strings (``"0/mu"``-style) of the params-like sub-trees, in flattening order.

  >>> import jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones((2, 2))}
  >>> params_like_paths(optax.adam(1e-3).init(params), params)
  ['0/mu', '0/nu']
  """
  matches = _matcher(params)
  found = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=matches)[0]
  return [path_to_str(k) for k, node in found if matches(node)]


def reset_optimizer_state(opt_state, params, entries, fresh=None):
  """Resets the selected entries of every params-like sub-tree of ``opt_state``.

  Works for any optax optimizer whose per-parameter state mirrors the params (adam, adamw,
  lion, sgd with momentum, chains, ``optax.MultiSteps``, ``optax.inject_hyperparams``, ...);
  see the module docstring for the rule and its limits. Jit-able; dtypes, shapes and
  shardings of the state are kept.

  Args:
    opt_state: the optimizer state.
    params: the params the state was built for (structure and shapes only).
    entries: a pytree like ``params``: a bool array per leaf to reset (True = reset), or
      ``None`` for leaves left untouched (e.g. the regrown entries of a RigL step).
    fresh: where reset entries take their values from: ``None`` (exactly 0), or a state with
      the structure of ``opt_state``, e.g. ``tx.init(params)``, so that reset entries hold what
      a newly initialised optimizer holds (0 for moments and traces, but e.g. the initial
      accumulator value of ``optax.adagrad``).

  Returns:
    The state with the same structure, the selected entries reset.

  Raises:
    ValueError/TypeError: ``entries`` does not align with ``params``, or a leaf of it is not a
      bool array of that leaf's shape, or ``fresh`` does not have the state's structure.

  >>> import jax.numpy as jnp, optax
  >>> params = {"w": jnp.ones(3)}
  >>> tx = optax.adam(1e-3)
  >>> _, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  >>> state = reset_optimizer_state(state, params, {"w": jnp.array([True, False, False])})
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
  matches = _matcher(params)

  def reset(node, *initial):
    if not matches(node):
      return node
    leaves, treedef = jax.tree_util.tree_flatten(node)
    if initial:
      values = treedef.flatten_up_to(initial[0])
    else:
      values = [jnp.zeros((), x.dtype) for x in leaves]
    out = [x if e is None else jnp.where(e, v.astype(x.dtype), x)
           for x, e, v in zip(leaves, e_leaves, values)]
    return treedef.unflatten(out)

  if fresh is None:
    return jax.tree_util.tree_map(reset, opt_state, is_leaf=matches)
  try:
    return jax.tree_util.tree_map(reset, opt_state, fresh, is_leaf=matches)
  except (ValueError, TypeError) as err:
    raise ValueError(f"fresh must have the structure of opt_state (e.g. tx.init(params) for the "
                     f"same tx and params); they differ: {err}") from None
