"""Activation-aware scores: Wanda (Sun et al., 2023), ``|w|·‖x‖`` per input feature.

Activation norms are a pytree aligned with params: per kernel, either a 1-D array of the
input-feature norms (placed along ``axis``, -2 by default: ``(in, out)`` dense kernels and
``(h, w, in, out)`` convolutions) or an array that broadcasts against the kernel.
:func:`input_norms` collects them for dense layers from one forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxprune import filters
from jaxprune.core import (
    CALL_PRIMITIVES, at_path, bind_equation, describe, flatten_with_paths, inner_jaxpr, is_array,
    leaves_like)
from jaxprune.scores import curvature as h

_SAME_VALUE = ("convert_element_type", "copy", "copy_p", "reduce_precision")


def wanda(params, activation_norms, *, axis: int = -2):
  """Wanda scores ``|w_ij|·‖x_i‖``: weight magnitude times the norm of its input feature.

  Args:
    params: any pytree.
    activation_norms: pytree like ``params``: per leaf None (no score: exclude that leaf with
      ``where=`` when building masks), a 1-D array of norms of the input features along
      ``axis``, or an array broadcastable to the leaf (as returned by :func:`input_norms`).
    axis: where 1-D norms go: the input-feature axis of the kernels (default -2).

  Returns:
    Float32 scores like ``params``; None where the norms are None. The paper compares weights
    within each output (``masks.topk`` per layer is a close, simpler choice; use
    ``masks.n_of_m(..., axis=-2)`` for N:M along the inputs).

  >>> import jax.numpy as jnp
  >>> w = {"kernel": jnp.array([[1., -2.], [3., 1.]]), "bias": jnp.ones(2)}
  >>> wanda(w, {"kernel": jnp.array([2., 0.5]), "bias": None})["kernel"].tolist()
  [[2.0, 4.0], [1.5, 0.5]]
  """
  paths, leaves, treedef = flatten_with_paths(params)
  norms = leaves_like(params, activation_norms, name="activation_norms")
  return treedef.unflatten([None if n is None else _score(p, w, n, axis)
                            for p, w, n in zip(paths, leaves, norms)])


def _score(path, w, n, axis):
  if not is_array(w) or not is_array(n):
    raise TypeError(f"wanda: at {at_path(path)} params and activation_norms must be arrays; "
                    f"got params {describe(w)} and norms {describe(n)}.")
  if n.ndim == 1 and w.ndim >= 1:
    if not -w.ndim <= axis < w.ndim or n.shape[0] != w.shape[axis]:
      raise ValueError(
          f"wanda: activation_norms at {at_path(path)} has {n.shape[0]} entries but params "
          f"there have shape {tuple(w.shape)} (axis={axis}). Give one norm per input feature, "
          "or set axis= to the input-feature axis.")
    shape = [1] * w.ndim
    shape[axis % w.ndim] = n.shape[0]
    n = n.reshape(shape)
  elif jnp.broadcast_shapes(n.shape, w.shape) != tuple(w.shape):
    raise ValueError(f"wanda: activation_norms at {at_path(path)} with shape {tuple(n.shape)} "
                     f"does not broadcast to the params' shape {tuple(w.shape)}.")
  return jnp.abs(h.as_f32(w)) * h.as_f32(n)


def input_norms(fn, params, *args, where=None):
  """Collects ``‖x‖`` per input feature of every kernel used in a matrix product by ``fn``.

  ``fn(params, *args)`` is traced to a jaxpr and evaluated; for every ``dot_general`` with a
  selected params leaf (possibly cast) as one operand, the other operand's squared entries
  are summed over all its non-contracted axes (the batch, tokens, ...). Kernels used several
  times accumulate. This covers dense layers, attention projections and ``einsum``s (flax,
  equinox or plain JAX), also through ``jax.jit``, ``checkpoint`` and custom-derivative
  calls, and kernels reshaped before the product by merging neighbouring axes (an im2col
  convolution ``patches @ kernel.reshape(-1, out)`` gets norms of shape ``(*window, in, 1)``).
  Not collected (None): ``conv_general_dilated`` kernels (compute their im2col norms
  yourself) and kernels sliced inside ``lax.scan``/``while_loop`` bodies (stacked layers). Wrap the call in
  ``jax.jit`` for speed on large models.

  Args:
    fn: ``fn(params, *args)``, e.g. the model's apply function on a calibration batch.
    params: any pytree.
    *args: the inputs of ``fn``.
    where: which leaves to collect (default ``ndim >= 2``).

  Returns:
    A pytree like ``params``: per collected kernel a float32 array that broadcasts against it
    (e.g. ``(in, 1)`` for an ``(in, out)`` kernel), None elsewhere. Pass it to :func:`wanda`.

  >>> import jax.numpy as jnp
  >>> p = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  >>> x = jnp.array([[3., 1.], [4., 1.]])
  >>> input_norms(lambda p, x: x @ p["w"] + p["b"], p, x)["w"].tolist()
  [[5.0], [1.4142135381698608]]
  """
  h.check_callable(fn, "fn", "input_norms")
  paths, leaves, treedef = flatten_with_paths(params)
  chosen = filters.select(params, where)
  index = [i for i, (x, c) in enumerate(zip(leaves, chosen)) if c and is_array(x)]
  others = [x for i, x in enumerate(leaves) if i not in index]
  rebuild = lambda sel, rest: treedef.unflatten(_merge(len(leaves), index, sel, rest))
  selected = [leaves[i] for i in index]
  closed = jax.make_jaxpr(lambda sel, rest, a: fn(rebuild(sel, rest), *a))(
      selected, others, args)
  flat_in = jax.tree.leaves((selected, others, args))
  origin = ([(j, tuple((a,) for a in range(jnp.ndim(x)))) for j, x in enumerate(selected)]
            + [None] * (len(flat_in) - len(selected)))
  acc = {}
  _run(closed.jaxpr, closed.consts, flat_in, origin, [leaves[i] for i in index], acc)
  out: list = [None] * len(leaves)
  for j, i in enumerate(index):
    if j in acc:
      out[i] = jnp.sqrt(acc[j])
  return treedef.unflatten(out)


def _merge(n, index, sel, rest):
  out, it_sel, it_rest = [], iter(sel), iter(rest)
  chosen = set(index)
  for i in range(n):
    out.append(next(it_sel) if i in chosen else next(it_rest))
  return out


def _run(jaxpr, consts, values, origin, kernels, acc):
  """Evaluates ``jaxpr``; records input norms of dot_generals on tracked kernels in ``acc``.

  ``origin`` gives, per input, None or ``(kernel index, axes)``: the value is that kernel
  (possibly cast, transposed or reshaped) and its axis ``a`` is the kernel's consecutive axes
  ``axes[a]`` (a tuple: one axis, several merged by a reshape, or none for a new unit axis).
  """
  env, src = {}, {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, x, o in zip(jaxpr.invars, values, origin):
    env[v] = x
    if o is not None:
      src[v] = o
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    ins = [None if isinstance(v, jcore.Literal) else src.get(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name == "dot_general":
      _record(eqn, invals, ins, kernels, acc)
    inner = inner_jaxpr(eqn) if name in CALL_PRIMITIVES else None
    if inner is not None:
      outs = _run(inner[0], inner[1], invals, ins, kernels, acc)
    else:
      outs = bind_equation(eqn, invals)
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
    if name in _SAME_VALUE and ins[0] is not None:
      src[eqn.outvars[0]] = ins[0]
    elif name == "transpose" and ins[0] is not None:  # a view of the kernel, axes permuted
      j, axes = ins[0]
      src[eqn.outvars[0]] = (j, tuple(axes[a] for a in eqn.params["permutation"]))
    elif name == "reshape" and ins[0] is not None:  # e.g. an im2col conv's (window, in) -> in
      merged = _merged_axes(ins[0][1], invals[0].shape, eqn.params["new_sizes"])
      if merged is not None:
        src[eqn.outvars[0]] = (ins[0][0], merged)
  return [read(v) for v in jaxpr.outvars]


def _merged_axes(axes, old_shape, new_shape):
  """The kernel axes of each axis after a reshape that only merges neighbours, else None.

  Splitting an axis (``(in,) -> (heads, head_dim)``) is not followed: the norms would have to
  be split too, and a merge of non-consecutive kernel axes (after a transpose) has no layout
  of the kernel's own.
  """
  out, i = [], 0
  for size in new_shape:
    group, prod = [], 1
    while i < len(old_shape) and (prod < size or (size == 1 and not group
                                                  and old_shape[i] == 1)):
      group.append(i)
      prod *= old_shape[i]
      i += 1
    if prod != size:
      return None
    out.append(group)
  if any(old_shape[k] != 1 for k in range(i, len(old_shape))):
    return None
  if out:
    out[-1].extend(range(i, len(old_shape)))  # trailing unit axes join the last one
  result = []
  for group in out:
    kernel_axes = tuple(a for k in group for a in axes[k])
    if kernel_axes != tuple(range(kernel_axes[0], kernel_axes[0] + len(kernel_axes))
                            if kernel_axes else ()):
      return None
    result.append(kernel_axes)
  return tuple(result)






def _record(eqn, invals, ins, kernels, acc):
  (c_lhs, c_rhs), (b_lhs, b_rhs) = eqn.params["dimension_numbers"]
  for k, (x_pos, c_k, c_x, b_k) in enumerate(
      ((1, c_lhs, c_rhs, b_lhs), (0, c_rhs, c_lhs, b_rhs))):
    if ins[k] is None or b_k or ins[x_pos] is not None or not c_k:
      continue
    j, axes = ins[k]
    kernel, x = kernels[j], invals[x_pos]
    pairs = {a: axes[b] for a, b in zip(c_x, c_k)}  # activation axis -> its kernel axes
    kernel_axes = sorted(a for group in pairs.values() for a in group)
    if len(set(kernel_axes)) != len(kernel_axes):
      continue  # one kernel axis contracted twice: no per-feature norm
    kept_x = sorted(c_x)
    sq = jnp.sum(jnp.square(h.as_f32(x)), tuple(a for a in range(x.ndim) if a not in kept_x))
    by_kernel_axis = sorted(pairs, key=lambda a: pairs[a][0] if pairs[a] else -1)
    sq = jnp.transpose(sq, [kept_x.index(a) for a in by_kernel_axis])
    shape = [kernel.shape[a] if a in kernel_axes else 1 for a in range(kernel.ndim)]
    sq = sq.reshape(shape)
    acc[j] = sq if j not in acc else acc[j] + sq
