"""Re-evaluates a traced jaxpr with the removed channels cut out of every value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from jaxprune.core import bind_equation
from jaxprune.structure import _rules


class Cut:
  """Which elements are removed, with the new shape of every traced value (memoised)."""

  def __init__(self, removed: np.ndarray):
    self.removed = removed
    self._changed = {}

  def keep(self, ids) -> np.ndarray:
    return np.nonzero(~self.removed[ids])[0]

  def shape(self, scope, v):
    if isinstance(v, jcore.Literal):
      return tuple(np.shape(v.val))
    return tuple(int(np.count_nonzero(~self.removed[x])) for x in scope.env[v])

  def changed(self, scope) -> bool:
    key = id(scope)
    if key not in self._changed:
      vs = list(scope.env)
      self._changed[key] = any(self.shape(scope, v) != tuple(v.aval.shape) for v in vs) or any(
          self.changed(c) for cs in scope.children.values() for c in cs)
    return self._changed[key]

  def eqn_changed(self, scope, i, eqn) -> bool:
    for v in list(eqn.invars) + list(eqn.outvars):
      if not isinstance(v, jcore.Literal) and self.shape(scope, v) != tuple(v.aval.shape):
        return True
    return any(self.changed(c) for c in scope.children.get(i, ()))


def slice_value(cut: Cut, ids, x):
  """Keeps the surviving entries of ``x`` along every axis."""
  for a, e in enumerate(ids):
    keep = cut.keep(e)
    if len(keep) != x.shape[a]:
      x = jnp.take(x, jnp.asarray(keep), axis=a)
  return x


def run(cut: Cut, scope, consts, args):
  """Evaluates ``scope.jaxpr`` on ``args`` (already cut), cutting its constants."""
  jaxpr = scope.jaxpr
  env = {}
  for v, c in zip(jaxpr.constvars, consts):
    env[v] = slice_value(cut, scope.env[v], jnp.asarray(c))
  for v, x in zip(jaxpr.invars, args):
    env[v] = x

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for i, eqn in enumerate(jaxpr.eqns):
    invals = [read(v) for v in eqn.invars]
    if not cut.eqn_changed(scope, i, eqn):
      outs = bind_equation(eqn, invals)
    else:
      outs = _changed(cut, scope, i, eqn, invals)
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


def _changed(cut, scope, i, eqn, invals):
  name, p = eqn.primitive.name, eqn.params
  out_shape = lambda k=0: cut.shape(scope, eqn.outvars[k])  # noqa: E731
  if i in scope.children and name != "scan":
    child = scope.children[i][0]
    sub = p[_rules.CALLS[name]]
    consts = sub.consts if hasattr(sub, "consts") else ()
    fn = lambda *a: run(cut, child, consts, a)  # noqa: E731
    if name in ("remat2", "checkpoint", "remat"):
      fn = jax.checkpoint(fn, prevent_cse=p.get("prevent_cse", True), policy=p.get("policy"))
    return fn(*invals)
  if name == "scan":
    return _scan(cut, scope.children[i][0], p, invals)
  if name == "reshape":
    return bind_equation(eqn, invals, new_sizes=out_shape(), dimensions=None)
  if name == "broadcast_in_dim":
    return bind_equation(eqn, invals, shape=out_shape())
  if name == "split":
    return bind_equation(eqn, invals, sizes=tuple(out_shape(k)[p["axis"]]
                                         for k in range(len(eqn.outvars))))
  if name == "slice":
    ids = scope.env[eqn.invars[0]]
    lo, hi = [], []
    for x, s, e in zip(ids, p["start_indices"], p["limit_indices"]):
      kept = ~cut.removed[x]
      lo.append(int(kept[:s].sum()))
      hi.append(int(kept[:e].sum()))
    return bind_equation(eqn, invals, start_indices=tuple(lo), limit_indices=tuple(hi))
  if name == "gather":
    sizes = list(p["slice_sizes"])
    for a, n in enumerate(jnp.shape(invals[0])):
      if sizes[a] == eqn.invars[0].aval.shape[a]:
        sizes[a] = n
    return bind_equation(eqn, invals, slice_sizes=tuple(sizes))
  if name == "conv_general_dilated" and p["feature_group_count"] > 1:
    lhs_f = p["dimension_numbers"].lhs_spec[1]
    return bind_equation(eqn, invals, feature_group_count=jnp.shape(invals[0])[lhs_f])
  return bind_equation(eqn, invals)


def _scan(cut, child, p, invals):
  nc, nk = p["num_consts"], p["num_carry"]
  consts, init, xs = invals[:nc], invals[nc:nc + nk], invals[nc + nk:]
  body_consts = p["jaxpr"].consts

  def body(carry, x):
    outs = run(cut, child, body_consts, list(consts) + list(carry) + list(x))
    return outs[:nk], outs[nk:]

  carry, ys = lax.scan(body, list(init), list(xs), length=p["length"], reverse=p["reverse"],
                       unroll=p["unroll"])
  return list(carry) + list(ys)
