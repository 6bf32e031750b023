"""Channel-level dataflow over a jaxpr: which entries of which axes must be cut together.

Every axis of every value gets one integer *element* per entry. Rules per primitive either share
elements between axes (an element-wise op: the output channel ``i`` is the input channel ``i``),
record a *union* (``dot_general`` contracts two axes: channel ``i`` of one is channel ``i`` of
the other), a *reshape record* (a flat axis made of, or split into, several axes), or *freeze*
elements with a reason (a reduction over them, an unknown primitive, the model's inputs and
outputs). ``_trace`` turns the result into connected components = removable channels.
"""

from __future__ import annotations

import numpy as np
from jax.extend import core as jcore

ELEMENTWISE = frozenset("""
abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type
copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or pow real
reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh xor
square logaddexp optimization_barrier sharding_constraint mesh_cast pvary
""".split())
CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr",
         "remat": "jaxpr"}
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or "
                       "reduce_xor argmax argmin".split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
SAME_VALUE = frozenset("convert_element_type copy copy_p reduce_precision transpose reshape "
                       "broadcast_in_dim squeeze sharding_constraint mesh_cast pvary".split())


class Flow:
  """Elements, unions, reshape records and frozen elements collected over a whole trace."""

  def __init__(self):
    self.count = 0
    self.unions = []    # pairs of equally long int arrays
    self.records = []   # (flat ids (reshaped to factor shape), [factor ids per factor axis])
    self.frozen = []    # (ids, reason)

  def fresh(self, size: int) -> np.ndarray:
    ids = np.arange(self.count, self.count + size, dtype=np.int64)
    self.count += size
    return ids

  def union(self, a, b):
    if len(a) and len(a) == len(b):
      self.unions.append((np.asarray(a).ravel(), np.asarray(b).ravel()))

  def freeze(self, ids, reason: str):
    if len(ids):
      self.frozen.append((np.asarray(ids).ravel(), reason))


class Scope:
  """The elements of every variable of one jaxpr invocation, and its nested invocations."""

  def __init__(self, jaxpr):
    self.jaxpr = jaxpr
    self.env = {}       # Var -> tuple of id arrays, one per axis
    self.weight = set()  # Vars that are (views of) parameters or constants
    self.children = {}   # eqn index -> list of Scopes


def _shape(v):
  return tuple(v.aval.shape)


def run(flow: Flow, jaxpr, in_ids, in_weight, consts_weight=True) -> Scope:
  """Analyses ``jaxpr`` (a ``core.Jaxpr``) given the elements of its inputs."""
  scope = Scope(jaxpr)
  for v in jaxpr.constvars:
    scope.env[v] = tuple(flow.fresh(n) for n in _shape(v))
    if consts_weight:
      scope.weight.add(v)
  for v, ids, w in zip(jaxpr.invars, in_ids, in_weight):
    scope.env[v] = ids
    if w:
      scope.weight.add(v)
  for i, eqn in enumerate(jaxpr.eqns):
    ins = [None if isinstance(v, jcore.Literal) else scope.env[v] for v in eqn.invars]
    weights = [not isinstance(v, jcore.Literal) and v in scope.weight for v in eqn.invars]
    outs = _eqn(flow, scope, i, eqn, ins, weights)
    for v, ids in zip(eqn.outvars, outs):
      scope.env[v] = tuple(ids)
    if eqn.primitive.name in SAME_VALUE and weights and weights[0]:
      scope.weight.add(eqn.outvars[0])
  return scope


def _fresh_out(flow, eqn):
  return [tuple(flow.fresh(n) for n in _shape(v)) for v in eqn.outvars]


def _freeze_all(flow, ins, outs, reason):
  for ids in list(ins) + list(outs):
    for x in ids or ():
      flow.freeze(x, reason)


def _eqn(flow, scope, i, eqn, ins, weights):
  name = eqn.primitive.name
  p = eqn.params
  if name in ELEMENTWISE or (name == "optimization_barrier"):
    if eqn.primitive.multiple_results:
      return list(ins)
    return [_elementwise(flow, eqn, ins)]
  if name in CALLS and p.get(CALLS[name]) is not None:
    sub = p[CALLS[name]]
    jaxpr = sub.jaxpr if hasattr(sub, "jaxpr") else sub
    if len(jaxpr.invars) == len(ins):
      ins = [x if x is not None else tuple(flow.fresh(n) for n in _shape(v))
             for x, v in zip(ins, jaxpr.invars)]
      child = run(flow, jaxpr, ins, weights)
      scope.children[i] = [child]
      return [child.env[v] if not isinstance(v, jcore.Literal)
              else tuple(flow.fresh(n) for n in _shape(v)) for v in jaxpr.outvars]
  if name == "scan":
    return _scan(flow, scope, i, eqn, ins, weights)
  rule = RULES.get(name)
  if rule is not None and all(x is not None for x in ins[:1]):
    return rule(flow, eqn, ins, weights)
  outs = _fresh_out(flow, eqn)
  _freeze_all(flow, ins, outs, f"passes through {name}, which jaxprune.structure does not "
              "follow")
  return outs


def _elementwise(flow, eqn, ins):
  shape = _shape(eqn.outvars[0])
  out = [None] * len(shape)
  for ids in ins:
    if ids is None or len(ids) != len(shape):
      continue
    for a, x in enumerate(ids):
      if len(x) == shape[a]:
        if out[a] is None:
          out[a] = x
        elif out[a] is not x:
          flow.union(out[a], x)
  return tuple(x if x is not None else flow.fresh(n) for x, n in zip(out, shape))


def _broadcast(flow, eqn, ins, weights):
  shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
  out = [None] * len(shape)
  for a, d in enumerate(dims):
    if len(ins[0][a]) == shape[d]:
      out[d] = ins[0][a]
  return [tuple(x if x is not None else flow.fresh(n) for x, n in zip(out, shape))]


def _reshape(flow, eqn, ins, weights):
  old, new = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
  out = [None] * len(new)
  a = b = 0
  while a < len(old) or b < len(new):
    if a < len(old) and old[a] == 1:
      a += 1
      continue
    if b < len(new) and new[b] == 1:
      b += 1
      continue
    ga, gb = [a], [b]
    pa, pb = old[a], new[b]
    while pa != pb:
      if pa < pb:
        a += 1
        ga.append(a)
        pa *= old[a]
      else:
        b += 1
        gb.append(b)
        pb *= new[b]
    ga = [k for k in ga if old[k] != 1]
    gb = [k for k in gb if new[k] != 1]
    if len(ga) == 1 and len(gb) == 1:
      out[gb[0]] = ins[0][ga[0]]
    elif len(ga) == 1:  # split: the flat input axis becomes several axes
      factors = [flow.fresh(new[k]) for k in gb]
      for k, f in zip(gb, factors):
        out[k] = f
      flow.records.append((ins[0][ga[0]].reshape([new[k] for k in gb]), factors))
    elif len(gb) == 1:  # merge: several input axes become one flat axis
      flat = flow.fresh(new[gb[0]])
      out[gb[0]] = flat
      flow.records.append((flat.reshape([old[k] for k in ga]), [ins[0][k] for k in ga]))
    else:
      for k in ga:
        flow.freeze(ins[0][k], "reshaped into axes that mix several input axes")
      for k in gb:
        out[k] = flow.fresh(new[k])
    a, b = a + 1, b + 1
  return [tuple(x if x is not None else flow.fresh(n) for x, n in zip(out, new))]


def _squeeze(flow, eqn, ins, weights):
  dims = {d % len(ins[0]) for d in eqn.params["dimensions"]}
  return [tuple(x for a, x in enumerate(ins[0]) if a not in dims)]


def _transpose(flow, eqn, ins, weights):
  return [tuple(ins[0][a] for a in eqn.params["permutation"])]


def _reduce(flow, eqn, ins, weights):
  axes = set(eqn.params["axes"])
  for a in axes:
    flow.freeze(ins[0][a], f"a {eqn.primitive.name} runs over it (e.g. a normalisation "
                "statistic or a pooling over features), which removing channels would change")
  return [tuple(x for a, x in enumerate(ins[0]) if a not in axes)] * len(eqn.outvars)


def _cumulative(flow, eqn, ins, weights):
  flow.freeze(ins[0][eqn.params["axis"]], f"a {eqn.primitive.name} runs over it")
  return [ins[0]]


def _dot_general(flow, eqn, ins, weights):
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  lhs, rhs = ins
  for a, b in zip(lc, rc):
    if weights[0] or weights[1]:
      flow.union(lhs[a], rhs[b])
    else:
      reason = ("contracted between two activations (dot_general), e.g. attention's "
                "query-key head dimension")
      flow.freeze(lhs[a], reason)
      flow.freeze(rhs[b], reason)
  for a, b in zip(lb, rb):
    flow.union(lhs[a], rhs[b])
  out = [lhs[a] for a in lb]
  out += [x for a, x in enumerate(lhs) if a not in lc and a not in lb]
  out += [x for a, x in enumerate(rhs) if a not in rc and a not in rb]
  return [tuple(out)]


def _conv(flow, eqn, ins, weights):
  p = eqn.params
  dn = p["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  lhs, rhs = ins
  groups = p["feature_group_count"]
  out = [None] * len(out_spec)
  if p["batch_group_count"] == 1:
    out[out_spec[0]] = lhs[lhs_spec[0]]
  rhs_in, rhs_out = rhs[rhs_spec[1]], rhs[rhs_spec[0]]
  if not weights[1]:
    _freeze_all(flow, [ins], [], "convolution with a kernel that is not a parameter")
  elif groups == 1:
    flow.union(lhs[lhs_spec[1]], rhs_in)
    out[out_spec[1]] = rhs_out
  elif len(rhs_in) == 1 and len(rhs_out) == groups:  # depthwise, channel multiplier 1
    flow.union(lhs[lhs_spec[1]], rhs_out)
    out[out_spec[1]] = rhs_out
    flow.freeze(rhs_in, "the per-group input axis of a depthwise kernel")
  else:
    reason = (f"grouped convolution (feature_group_count={groups}) other than depthwise with "
              "multiplier 1")
    for x in (lhs[lhs_spec[1]], rhs_in, rhs_out):
      flow.freeze(x, reason)
  for a in rhs_spec[2:]:
    flow.freeze(rhs[a], "a convolution window axis")
  for a in lhs_spec[2:]:
    flow.freeze(lhs[a], "a convolution spatial axis")
  return [tuple(x if x is not None else flow.fresh(n)
                for x, n in zip(out, _shape(eqn.outvars[0])))]


def _concatenate(flow, eqn, ins, weights):
  d = eqn.params["dimension"]
  ins = [x if x is not None else tuple(flow.fresh(n) for n in _shape(v))
         for x, v in zip(ins, eqn.invars)]
  out = list(ins[0])
  for ids in ins[1:]:
    for a, x in enumerate(ids):
      if a != d:
        flow.union(out[a], x)
  out[d] = np.concatenate([ids[d] for ids in ins])
  return [tuple(out)]


def _split(flow, eqn, ins, weights):
  axis, outs, start = eqn.params["axis"], [], 0
  for s in eqn.params["sizes"]:
    ids = list(ins[0])
    ids[axis] = ins[0][axis][start:start + int(s)]
    start += int(s)
    outs.append(tuple(ids))
  return outs


def _slice(flow, eqn, ins, weights):
  p = eqn.params
  strides = p["strides"] or (1,) * len(ins[0])
  out = []
  for x, lo, hi, st in zip(ins[0], p["start_indices"], p["limit_indices"], strides):
    if lo == 0 and hi == len(x) and st == 1:
      out.append(x)
    elif st == 1:
      out.append(x[lo:hi])
    else:
      flow.freeze(x, "a strided slice runs over it")
      out.append(flow.fresh(len(range(lo, hi, st))))
  return [tuple(out)]


def _pad(flow, eqn, ins, weights):
  out = []
  for x, cfg, n in zip(ins[0], eqn.params["padding_config"], _shape(eqn.outvars[0])):
    if tuple(cfg) == (0, 0, 0):
      out.append(x)
    else:
      flow.freeze(x, "padded (lax.pad)")
      out.append(flow.fresh(n))
  return [tuple(out)]


def _gather(flow, eqn, ins, weights):
  p = eqn.params
  dn, sizes = p["dimension_numbers"], p["slice_sizes"]
  operand = ins[0]
  outs = _fresh_out(flow, eqn)
  out = list(outs[0])
  skipped = set(dn.collapsed_slice_dims) | set(dn.operand_batching_dims)
  kept = [a for a in range(len(operand)) if a not in skipped]
  for a, d in zip(kept, dn.offset_dims):
    if sizes[a] == len(operand[a]) and a not in dn.start_index_map:
      out[d] = operand[a]
    else:
      flow.freeze(operand[a], "indexed by a gather")
  for a in skipped:
    flow.freeze(operand[a], "indexed by a gather (e.g. an embedding lookup)")
  return [tuple(out)]


def _iota(flow, eqn, ins, weights):
  outs = _fresh_out(flow, eqn)
  _freeze_all(flow, [], outs, "values from iota (positions)")
  return outs


def _scan(flow, scope, i, eqn, ins, weights):
  p = eqn.params
  body = p["jaxpr"]
  nc, nk = p["num_consts"], p["num_carry"]
  ins = [x if x is not None else tuple(flow.fresh(n) for n in _shape(v))
         for x, v in zip(ins, eqn.invars)]
  for x in ins[nc + nk:]:
    flow.freeze(x[0], "the scanned (stacked layers) axis of a lax.scan")
  body_ins = list(ins[:nc + nk]) + [x[1:] for x in ins[nc + nk:]]
  child = run(flow, body.jaxpr, body_ins, weights)
  scope.children[i] = [child]
  outs = [child.env.get(v) if not isinstance(v, jcore.Literal) else None
          for v in body.jaxpr.outvars]
  outs = [o if o is not None else tuple(flow.fresh(n) for n in _shape(v))
          for o, v in zip(outs, body.jaxpr.outvars)]
  for carry_in, carry_out in zip(ins[nc:nc + nk], outs[:nk]):
    for a, b in zip(carry_in, carry_out):
      flow.union(a, b)
  ys = [(flow.fresh(p["length"]),) + tuple(o) for o in outs[nk:]]
  for y in ys:
    flow.freeze(y[0], "the stacked axis of a lax.scan output")
  return list(ins[nc:nc + nk]) + ys


RULES = {
    "broadcast_in_dim": _broadcast, "reshape": _reshape, "squeeze": _squeeze,
    "transpose": _transpose, "dot_general": _dot_general, "conv_general_dilated": _conv,
    "concatenate": _concatenate, "split": _split, "slice": _slice, "pad": _pad,
    "gather": _gather, "iota": _iota,
    **{k: _reduce for k in REDUCTIONS}, **{k: _cumulative for k in CUMULATIVE},
}
