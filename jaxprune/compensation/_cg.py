"""Conjugate gradients on masked curvature-vector products (OBS-style compensation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune import filters
from jaxprune.core import at_path, describe, is_array, is_static_number, leaves_like
from jaxprune.scores import _hessian as h

_METHODS = ("ggn", "hessian")
F32 = jnp.float32


def compensate(loss_fn, params, masks, *args, steps: int = 50, damping=1e-3, method=None,
               gradient: bool = False, tol=1e-5, trainable=None):
  """Updates the kept weights to make up for the pruned ones; pruned entries come back 0.

  Around the dense ``params`` ``w`` the loss is modelled as
  ``L(w + δ) ≈ L(w) + gᵀδ + ½ δᵀ(A + λI)δ`` with ``A`` the Gauss-Newton matrix or the Hessian
  and ``λ = damping``. Pruned entries are forced to zero (``δ = −w`` there) and the kept
  entries solve ``(A_KK + λI) δ_K = A_KP w_P − g_K`` (the ``g`` term only with
  ``gradient=True``), by at most ``steps`` iterations of conjugate gradients on masked
  curvature-vector products (the model is linearised once). CG stops early at
  ``‖r‖ ≤ tol·‖b‖`` or on non-positive curvature (possible with the indefinite Hessian). The
  result is ``w + δ`` with pruned entries exactly 0 and the params' dtypes.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``; a ``jaxprune.scores.ModelLoss`` for the
      Gauss-Newton method.
    params: the dense (trained) weights: any pytree.
    masks: pytree like ``params`` with a bool array (True = kept) or None per leaf, e.g. from
      ``jaxprune.masks.topk`` on one-shot scores of ``params``.
    *args: extra arguments of ``loss_fn``: the calibration batch, e.g. ``inputs, targets``.
    steps: maximum number of CG iterations (a fixed cap: jit-friendly).
    damping: ``λ >= 0``, added to the curvature; larger values give smaller, safer updates.
      It is absolute: the GGN of a mean loss over examples the model fits confidently is
      tiny, so on such data 1e-3 to 1e-4 is already strong; prefer calibration examples held
      out from training.
    method: "ggn" (PSD; needs a ``ModelLoss``) or "hessian"; default: "ggn" for a
      ``ModelLoss``, else "hessian".
    gradient: include the gradient term (a Newton step on the kept weights as well). Off by
      default: at a trained minimum ``g ≈ 0``, and on other data (held-out calibration
      examples, a mini-batch) a weakly damped Newton step on it can diverge badly.
    tol: relative residual ``‖r‖/‖b‖`` at which CG stops (None or 0: run all ``steps``).
      Float32 CG cannot resolve much below 1e-6 and iterating past convergence amplifies
      round-off, so keep it above that.
    trainable: optional filter (see ``jaxprune.filters``) of the leaves that may change;
      default: every floating leaf (biases included). Other leaves only get their masks applied.

  Returns:
    Params like ``params``.

  >>> import jax.numpy as jnp
  >>> loss = lambda p, x, y: jnp.mean((x @ p["w"] - y) ** 2)
  >>> x = jnp.array([[1., 1.], [1., 0.9]])
  >>> new = compensate(loss, {"w": jnp.array([1., 1.])}, {"w": jnp.array([True, False])},
  ...                  x, x @ jnp.array([1., 1.]), damping=0.0)
  >>> [round(v, 3) for v in new["w"].tolist()]  # least squares on the kept column
  [1.95, 0.0]
  """
  fn_name = "compensate"
  steps = h.check_positive_int(steps, "steps", fn_name, minimum=0)
  _check_nonnegative(damping, "damping")
  tol = 0.0 if tol is None else tol
  _check_nonnegative(tol, "tol")
  method = _resolve_method(loss_fn, method)
  s = h.split(params, fn_name)
  keep = _masks(s, params, masks)
  h.check_loss(loss_fn, s, args, fn_name)
  free = _trainable(s, params, trainable)

  if method == "ggn":
    h.check_model(loss_fn, s, args, fn_name)
    matvec = h.ggn_operator(loss_fn, s, args, fn_name)
    grads = (jax.grad(lambda d: loss_fn(s.rebuild(d), *args))(s.diff) if gradient else None)
  else:
    grads, matvec = h.hessian_operator(loss_fn, s, args)
    grads = grads if gradient else None

  dtypes = [w.dtype for w in s.diff]
  to_params = lambda v: [x.astype(d) for x, d in zip(v, dtypes)]
  product = lambda v: [h.as_f32(y) for y in matvec(to_params(v))]

  def project(v):
    return [jnp.zeros_like(x) if not f else (x if m is None else jnp.where(m, x, 0.0))
            for x, m, f in zip(v, keep, free)]

  def operator(v):
    pv = project(v)
    return project([a + damping * x for a, x in zip(product(pv), pv)])

  pruned = [jnp.zeros(w.shape, F32) if m is None else jnp.where(m, 0.0, -h.as_f32(w))
            for w, m in zip(s.diff, keep)]
  rhs = [-a for a in product(pruned)]
  if grads is not None:
    rhs = [r - h.as_f32(g) for r, g in zip(rhs, grads)]
  delta = _cg(operator, project(rhs), steps, tol)
  new = []
  for w, m, d, f in zip(s.diff, keep, delta, free):
    x = (h.as_f32(w) + d).astype(w.dtype) if f else w
    new.append(x if m is None else jnp.where(m, x, jnp.zeros((), w.dtype)))
  return s.rebuild(new)


def _cg(operator, b, steps, tol):
  """Conjugate gradients from 0 for ``operator(x) = b`` (leaf lists, float32)."""
  dot = lambda u, v: sum(jnp.vdot(x, y) for x, y in zip(u, v))
  rs0 = dot(b, b)
  floor = jnp.asarray(tol, F32) ** 2 * rs0
  zeros = [jnp.zeros_like(x) for x in b]

  def cond(c):
    i, _, _, _, rs, active = c
    return (i < steps) & active & (rs > floor)

  def body(c):
    i, x, r, p, rs, _ = c
    ap = operator(p)
    pap = dot(p, ap)
    ok = pap > 0
    alpha = jnp.where(ok, rs / jnp.where(ok, pap, 1.0), 0.0)
    x = [xi + alpha * pi for xi, pi in zip(x, p)]
    r = [ri - alpha * ai for ri, ai in zip(r, ap)]
    rs_new = dot(r, r)
    beta = jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)
    p = [ri + beta * pi for ri, pi in zip(r, p)]
    return i + 1, x, r, p, rs_new, ok

  init = (jnp.zeros((), jnp.int32), zeros, b, b, rs0, jnp.ones((), bool))
  return jax.lax.while_loop(cond, body, init)[1]


def _check_nonnegative(value, name):
  if is_static_number(value) and not float(value) >= 0.0:
    raise ValueError(f"compensate: {name} must be >= 0; got {value!r}. E.g. {name}=1e-3.")


def _resolve_method(loss_fn, method):
  if method is None:
    return "ggn" if isinstance(loss_fn, h.ModelLoss) else "hessian"
  if method not in _METHODS:
    raise ValueError(f"compensate: method must be one of {_METHODS} or None; got {method!r}.")
  if method == "ggn":
    h.require_model(loss_fn, method, "compensate")
  return method


def _masks(s, params, masks):
  """The mask (bool array or None) of each floating leaf, checked against the params."""
  aligned = leaves_like(params, masks, name="masks")
  for i, (path, w, m) in enumerate(zip(s.paths, s.leaves, aligned)):
    if m is None:
      continue
    if i not in s.index:
      raise TypeError(f"compensate: masks at {at_path(path)} is {describe(m)} but the params "
                      f"leaf there is {describe(w)}, not a floating array. Use None there.")
    if not is_array(m) or m.dtype != jnp.bool_:
      raise TypeError(f"compensate: masks at {at_path(path)} must be a bool array (True = kept)"
                      f" or None; got {describe(m)}. Build masks with jaxprune.masks.")
    if tuple(m.shape) != tuple(w.shape):
      raise ValueError(
          f"compensate: masks at {at_path(path)} has shape {tuple(m.shape)} but params there "
          f"have shape {tuple(w.shape)}. Compute the masks from scores of these params.")
  return [aligned[i] for i in s.index]


def _trainable(s, params, trainable):
  if trainable is None:
    return [True] * len(s.index)
  f = filters.resolve(trainable)
  return [f(s.paths[i], s.leaves[i]) for i in s.index]
