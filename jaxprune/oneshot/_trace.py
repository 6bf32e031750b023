"""A resumable jaxpr interpreter that stops before every linear layer of tracked kernels.

``run(closed, inputs, origin, store)`` is a generator: it evaluates the jaxpr of
``apply_fn(params, *batch)`` and, before each ``dot_general`` whose one operand is a tracked
kernel (possibly cast, transposed, or sliced out of a stacked kernel by ``lax.scan``) and whose
other operand is not, yields a :class:`Site` and that other operand (the layer's input). When
resumed it computes the product with the kernel's *current* value in ``store``, so layers
pruned meanwhile feed their pruned outputs forward. Every use of a tracked kernel reads
``store``; nothing stale is kept. Values are freed after their last use, so a paused
interpreter holds only the live activations of its batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxprune.core import CALL_PRIMITIVES, bind_equation, inner_jaxpr

_SAME_VALUE = ("convert_element_type", "copy", "copy_p")


class Site(NamedTuple):
  """One use of a kernel as a linear layer.

  Attributes:
    leaf: index of the kernel among the tracked ones.
    index: the slice of a stacked kernel (one int per ``scan`` level), ``()`` if none.
    contract: the kernel's (sliced) axes contracted with the input, in increasing order;
      ``d_in`` is their product, ``d_out`` that of the others.
    x_key: identity of the input value within the run (equal for layers that share it).
  """
  leaf: int
  index: tuple
  contract: tuple
  d_in: int
  d_out: int
  x_key: Any


class Store:
  """The tracked kernels, replaced as layers are pruned."""

  def __init__(self, kernels):
    self.kernels = list(kernels)

  def value(self, origin, dtype):
    j, index, axes = origin
    k = self.kernels[j][index] if index else self.kernels[j]
    return jnp.transpose(k, axes).astype(dtype)


def matrix_of(kernel, contract):
  """``(d_in, d_out)`` view of a kernel: contracted axes first (in order), then the rest."""
  perm = tuple(contract) + tuple(a for a in range(kernel.ndim) if a not in contract)
  t = jnp.transpose(kernel, perm)
  d_in = int(np.prod([kernel.shape[a] for a in contract], dtype=np.int64))
  return t.reshape(d_in, -1), perm


def from_matrix(mat, shape, perm):
  """Inverse of :func:`matrix_of`."""
  return mat.reshape([shape[a] for a in perm]).transpose(np.argsort(perm))


def run(closed, inputs, origin, store, counter=None):
  """Generator over the sites of ``closed`` on ``inputs``; returns its outputs."""
  counter = [0] if counter is None else counter
  return (yield from _eval(closed.jaxpr, closed.consts, inputs, origin, store, counter))


_LAST_USE: dict = {}


def _last_uses(jaxpr):
  key = id(jaxpr)
  hit = _LAST_USE.get(key)
  if hit is not None and hit[0] is jaxpr:
    return hit[1]
  outs = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
  last = {}
  for e, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if not isinstance(v, jcore.Literal):
        last[v] = e
  drop = [[] for _ in jaxpr.eqns]
  for v, e in last.items():
    if v not in outs:
      drop[e].append(v)
  _LAST_USE[key] = (jaxpr, drop)
  return drop


def _eval(jaxpr, consts, values, origin, store, counter):
  frame = counter[0]
  counter[0] += 1
  env, src = {}, {}

  def read(v):
    if isinstance(v, jcore.Literal):
      return v.val
    if v in src:
      return store.value(src[v], v.aval.dtype)
    return env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, x, o in zip(jaxpr.invars, values, origin):
    if o is None:
      env[v] = x
    else:
      src[v] = o
  drop = _last_uses(jaxpr)
  for e, eqn in enumerate(jaxpr.eqns):
    ins = [None if isinstance(v, jcore.Literal) else src.get(v) for v in eqn.invars]
    name = eqn.primitive.name
    outs = None
    if name == "dot_general":
      site = _site(eqn, ins, store, frame)
      if site is not None:
        yield site, read(eqn.invars[site[1]])
    if name in CALL_PRIMITIVES and any(o is not None for o in ins):
      inner = inner_jaxpr(eqn)
      if inner is not None:
        outs = yield from _eval(inner[0], inner[1], [read(v) if o is None else None for v, o in
                                                     zip(eqn.invars, ins)], ins, store, counter)
    elif name == "scan" and any(o is not None for o in ins):
      outs = yield from _scan(eqn, [read(v) if o is None else None for v, o in
                                    zip(eqn.invars, ins)], ins, store, counter, read)
    if outs is None:
      outs = bind_equation(eqn, [read(v) for v in eqn.invars])
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
    if name in _SAME_VALUE and ins[0] is not None:
      src[eqn.outvars[0]] = ins[0]
    elif name == "transpose" and ins[0] is not None:  # a view of the kernel, axes permuted
      j, index, axes = ins[0]
      src[eqn.outvars[0]] = (j, index, tuple(axes[a] for a in eqn.params["permutation"]))
    for v in drop[e]:
      env.pop(v, None)
  return [read(v) for v in jaxpr.outvars]


def _site(eqn, ins, store, frame):
  """``(Site, kernel operand position)`` if ``eqn`` is a linear layer of a tracked kernel."""
  (c_lhs, c_rhs), (b_lhs, b_rhs) = eqn.params["dimension_numbers"]
  for k, c_k, b_k in ((0, c_lhs, b_lhs), (1, c_rhs, b_rhs)):
    x_pos = 1 - k
    if ins[k] is None or ins[x_pos] is not None or b_k or not c_k:
      continue
    j, index, axes = ins[k]
    kernel = store.kernels[j]
    shape = kernel.shape[len(index):]
    contract = tuple(sorted(axes[a] for a in c_k))
    d_in = int(np.prod([shape[a] for a in contract], dtype=np.int64))
    d_out = int(np.prod(shape, dtype=np.int64)) // max(d_in, 1)
    x_var = eqn.invars[x_pos]
    key = (frame, id(x_var)) if not isinstance(x_var, jcore.Literal) else None
    c_x = (c_rhs, c_lhs)[k]  # the input's contracted axes, paired with c_k
    return Site(j, index, contract, d_in, d_out, key), x_pos, tuple(c_x), tuple(c_k), axes
  return None


def layer_input(yielded):
  """The ``(rows, d_in)`` input matrix of a yielded site, columns in the kernel's order."""
  (site, x_pos, c_x, c_k, axes), x = yielded
  pairs = sorted(zip((axes[a] for a in c_k), c_x))  # kernel axis -> input axis
  ordered = [a for _, a in pairs]
  rest = [a for a in range(x.ndim) if a not in ordered]
  return jnp.transpose(x, rest + ordered).reshape(-1, site.d_in)


def _scan(eqn, values, ins, store, counter, read):
  """Unrolls a ``scan`` over tracked kernels so every slice of a stacked kernel is a layer."""
  p = eqn.params
  body, nc, ncar, length = p["jaxpr"], p["num_consts"], p["num_carry"], p["length"]
  consts, carry = values[:nc], values[nc:nc + ncar]
  xs, xs_in = values[nc + ncar:], ins[nc + ncar:]
  xs_vars = eqn.invars[nc + ncar:]
  if not length:
    return None
  ys = [None] * length
  steps = range(length - 1, -1, -1) if p.get("reverse") else range(length)
  for t in steps:
    x_t, o_t = [], []
    for x, o, v in zip(xs, xs_in, xs_vars):
      if o is not None and o[2] and o[2][0] == 0:  # slice of a stacked kernel's leading axis
        x_t.append(None)
        o_t.append((o[0], o[1] + (t,), tuple(a - 1 for a in o[2][1:])))
      else:
        x_t.append((read(v) if o is not None else x)[t])
        o_t.append(None)
    outs = yield from _eval(body.jaxpr, body.consts, list(consts) + list(carry) + x_t,
                            list(ins[:nc]) + [None] * ncar + o_t, store, counter)
    carry, ys[t] = outs[:ncar], outs[ncar:]
  stacked = [jnp.stack([y[i] for y in ys]) for i in range(len(ys[0]))]
  return list(carry) + stacked



