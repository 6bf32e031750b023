"""Proximal regularisers as optax transforms: ``l1``, ``group_lasso`` and ``l2``.

Each goes **last** in an ``optax.chain``: it takes the inner optimizer's update ``u``, forms
``z = params + u`` and returns ``prox(z) - params`` (``-params`` where ``prox(z)`` is 0), so
``optax.apply_updates`` lands on the proximal point and zeroed weights are exactly 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import filters
from jaxprune.core import at_path, describe, flatten_with_paths, is_array, is_static_number
from jaxprune.core import leaves_like
from jaxprune.regularize import _groups

F32 = jnp.float32


class RegularizeState(NamedTuple):
  """State of the proximal transforms: ``count``, the number of updates done (int32).

  >>> import jax.numpy as jnp, optax
  >>> from jaxprune import regularize
  >>> tx = regularize.group_lasso(0.1, groups=0)
  >>> state = tx.init({"w": jnp.ones((2, 2))})
  >>> type(state).__name__, int(state.count)
  ('RegularizeState', 0)
  """

  count: jax.Array


def l1(strength, *, where=None) -> optax.GradientTransformation:
  """Soft-thresholding (the proximal step of ``strength · ‖w‖₁``) after the inner update.

  Every selected entry becomes ``sign(z) · max(|z| − τ, 0)`` with ``z = w + u`` (``u`` the
  update from earlier in the chain) and ``τ = strength`` (or ``strength(step)``): entries
  with ``|z| <= τ`` become exactly 0. ``τ`` is the threshold per step, so for plain SGD with
  learning rate ``η`` on ``loss + λ‖w‖₁`` use ``strength = η·λ`` (proximal gradient / ISTA).

  Optimizer state: the inner optimizer (momentum, Adam moments) is not touched. A weight set
  to 0 comes back only on a step where ``|u| > τ``, i.e. when its (momentum-smoothed) update
  alone beats the threshold; otherwise it stays exactly 0, however the moments evolve.
  Network slimming (Liu et al. 2017) is ``l1`` on the norm layers' scales:
  ``where="scale"`` (the default ``where`` selects kernels, ``ndim >= 2``).

  Args:
    strength: threshold ``τ >= 0`` per step: a float or a schedule ``step -> float`` (e.g.
      ``optax.linear_schedule``); a traced negative value is clipped to 0.
    where: the leaves regularised (``jaxprune.filters``; default ``ndim >= 2``).

  Returns:
    An ``optax.GradientTransformation`` (state :class:`RegularizeState`); ``update`` needs
    ``params``.

  >>> import jax, jax.numpy as jnp, optax, jaxprune
  >>> params = {"w": jnp.array([[0.5, -0.05], [2.0, 0.1]])}
  >>> tx = optax.chain(optax.sgd(1.0), jaxprune.regularize.l1(0.2))
  >>> updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [[0.30000001192092896, 0.0], [1.7999999523162842, 0.0]]
  """
  def prox(paths, zs, tau):
    return [None if z is None else _soft(z, tau) for z in zs]
  return _proximal("l1", strength, where, prox)


def l2(strength, *, where=None) -> optax.GradientTransformation:
  """Proximal weight decay (``strength/2 · ‖w‖²``): ``z / (1 + τ)``; for comparison only.

  Shrinks every selected weight by the same factor and never makes one exactly 0 (unlike
  :func:`l1` and :func:`group_lasso`). Same placement, arguments and state as :func:`l1`.

  >>> import jax.numpy as jnp, optax, jaxprune
  >>> params = {"w": jnp.array([[1.0, -3.0]])}
  >>> tx = optax.chain(optax.sgd(1.0), jaxprune.regularize.l2(1.0))
  >>> updates, _ = tx.update({"w": jnp.zeros((1, 2))}, tx.init(params), params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [[0.5, -1.5]]
  """
  def prox(paths, zs, tau):
    return [None if z is None else (z.astype(F32) / (1.0 + tau)).astype(z.dtype) for z in zs]
  return _proximal("l2", strength, where, prox)


def group_lasso(strength, *, groups, where=None) -> optax.GradientTransformation:
  """Group soft-thresholding: each group ``g`` becomes ``z_g · max(0, 1 − τ / ‖z_g‖₂)``.

  A group whose norm (after the inner update) is at most ``τ`` becomes exactly 0 as a whole;
  the others shrink towards 0 along their own direction (Yuan & Lin 2006; SSL, Wen et al.
  2016). ``τ`` is the threshold per step, as in :func:`l1` (the same for every group).

  Groups:

  * an int axis: every index along that axis of a selected leaf is one group, the slice
    ``take(w, i, axis)``; for flax kernels ``(in, out)`` and conv kernels
    ``(*window, in, out)``, ``groups=-1`` is one group per output channel (filter),
    ``groups=0`` one per input feature. A leaf without that axis is an error.
  * the groups of ``jaxprune.structure.trace(...)`` (the graph, or a sequence of its groups):
    channel ``i`` of a group is every member's slice ``indices[i]`` along its axis, over
    several params (a layer's output channel, its bias, the next layer's input channel); the
    norm is taken jointly over all of them, so coupled slices vanish together. Groups that are
    not prunable are left alone, and so is everything outside the groups; ``where`` must be
    None (filter the groups instead). When groups overlap (a kernel's columns in one group,
    its rows in the next), all norms are taken from the same ``z`` and the factors multiply:
    the exact prox for disjoint groups, the usual approximation otherwise; a group under the
    threshold still becomes exactly 0.

  Optimizer state is handled as in :func:`l1`: a zeroed group comes back only when its
  update's norm exceeds ``τ``.

  Args:
    strength: threshold ``τ >= 0`` per step: a float or a schedule ``step -> float``.
    groups: an int axis, or structure groups (see above).
    where: the leaves regularised with axis groups (default ``ndim >= 2``).

  Returns:
    An ``optax.GradientTransformation`` (state :class:`RegularizeState`).

  >>> import jax, jax.numpy as jnp, optax, jaxprune
  >>> params = {"w": jnp.array([[3.0, 0.1], [4.0, 0.1]])}  # column norms 5 and 0.14
  >>> tx = optax.chain(optax.sgd(1.0), jaxprune.regularize.group_lasso(1.0, groups=-1))
  >>> updates, _ = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [[2.4000000953674316, 0.0], [3.200000047683716, 0.0]]
  """
  kind, spec = _groups.parse(groups, "group_lasso")
  if kind == "axis":
    def axis_prox(paths, zs, tau):
      out = []
      for path, z in zip(paths, zs):
        if z is None:
          out.append(None)
          continue
        axis = _groups.norm_axis(spec, z, path, "group_lasso")
        norm = jnp.sqrt(_groups.slice_sq(z, axis))
        out.append(_scaled(z, _groups.along(_shrink(norm, tau), axis, z.ndim)))
      return out
    return _proximal("group_lasso", strength, where, axis_prox)

  if where is not None:
    raise ValueError("group_lasso: where= must be None with structure groups (they select their "
                     "own params); filter the groups instead, e.g. groups=[g for g in "
                     "graph.groups if ...].")

  def prox(paths, zs, tau):
    by_path = _groups.leaf_arrays(paths, zs)
    checked = _groups.check_graph(spec, by_path, "group_lasso")
    norms = _groups.graph_norms(checked, by_path)
    vectors = _groups.graph_factors(checked, [_shrink(n, tau) for n in norms],
                                    {p: x.shape for p, x in by_path.items()})
    factor = {}
    for (path, axis), vec in vectors.items():
      f = _groups.along(vec, axis, by_path[path].ndim)
      factor[path] = f if path not in factor else factor[path] * f
    return [None if z is None or p not in factor else _scaled(z, factor[p])
            for p, z in zip(paths, zs)]

  used = {m.path for g in spec for m in g.members}
  return _proximal("group_lasso", strength, filters.Filter(
      lambda path, leaf: path in used, "structure groups"), prox, allow_empty=True)


def _soft(z, tau):
  x = z.astype(F32)
  return jnp.where(jnp.abs(x) <= tau, 0.0, x - jnp.sign(x) * tau).astype(z.dtype)


def _shrink(norm, tau):
  return jnp.where(norm > tau, 1.0 - tau / jnp.where(norm > 0, norm, 1.0), 0.0)


def _scaled(z, factor):
  return (z.astype(F32) * factor).astype(z.dtype)


def check_strength(strength, name: str):
  """Returns a ``step -> float32`` schedule; rejects negative, non-finite and non-numbers."""
  if callable(strength):
    try:
      first = strength(0)
    except Exception:  # noqa: BLE001  (a schedule that only traces: checked when called)
      first = None
    if first is not None and is_static_number(first):
      _check_value(first, name, "strength(0)")
    return lambda step: jnp.maximum(jnp.asarray(strength(step), F32), 0.0)
  _check_value(strength, name, "strength")
  value = float(strength)
  return lambda step: jnp.asarray(value, F32)


def _check_value(value, name, what):
  if isinstance(value, bool) or not is_static_number(value) or np.iscomplexobj(value):
    raise TypeError(f"{name}: {what} must be a real number >= 0 or a schedule step -> number; "
                    f"got {describe(value)} ({value!r}). E.g. {name}(1e-4).")
  if not (np.isfinite(float(value)) and float(value) >= 0.0):
    raise ValueError(f"{name}: {what} must be finite and >= 0 (the threshold per step); got "
                     f"{value!r}. E.g. {name}(1e-4).")


def _proximal(name, strength, where, prox, *, allow_empty=False):
  schedule = check_strength(strength, name)
  select = filters.resolve(where)

  def chosen(params):
    paths, leaves, _ = flatten_with_paths(params)
    picked = [is_array(x) and jnp.issubdtype(x.dtype, jnp.floating) and bool(select(p, x))
              for p, x in zip(paths, leaves)]
    if not any(picked) and not allow_empty:
      seen = [f"{p}: {describe(x)}" for p, x in zip(paths, leaves)][:12]
      raise ValueError(f"{name}: where={select!r} selected no floating leaf; leaves seen: "
                       f"{seen}. Pass e.g. where='kernel' or where='scale'.")
    return paths, leaves, picked

  def init_fn(params):
    paths, leaves, picked = chosen(params)
    prox(paths, [x if k else None for x, k in zip(leaves, picked)], jnp.zeros((), F32))
    return RegularizeState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(f"jaxprune.regularize.{name} needs the current params to take the "
                       "proximal step: call tx.update(updates, opt_state, params).")
    if not isinstance(state, RegularizeState):
      raise TypeError(f"jaxprune.regularize.{name} got a state of type "
                      f"{type(state).__name__}; expected the RegularizeState of its init.")
    paths, u_leaves, treedef = flatten_with_paths(updates)
    p_leaves = leaves_like(updates, params, name="params", ref_name="updates")
    _, _, picked = chosen(treedef.unflatten(p_leaves))
    zs = []
    for path, u, p, k in zip(paths, u_leaves, p_leaves, picked):
      if k and (not is_array(u) or tuple(u.shape) != tuple(p.shape)):
        raise ValueError(f"{name}: updates at {at_path(path)} must be an array shaped like the "
                         f"params there {tuple(p.shape)}; got {describe(u)}.")
      zs.append(_promoted(p, u) + u if k else None)
    tau = schedule(state.count)
    new = prox(paths, zs, tau)
    out = []
    for u, p, z in zip(u_leaves, p_leaves, new):
      if z is None:
        out.append(u)
        continue
      q = _promoted(p, u)
      out.append(jnp.where(z == 0, -q, z - q))
    top = np.iinfo(np.int32).max
    count = state.count + (state.count < top).astype(jnp.int32)
    return treedef.unflatten(out), RegularizeState(count=count)

  return optax.GradientTransformation(init_fn, update_fn)


def _promoted(p, u):
  return p.astype(jnp.promote_types(p.dtype, u.dtype))
