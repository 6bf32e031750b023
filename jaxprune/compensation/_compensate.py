"""``compensate``: OBS-style update of the kept weights, safe by construction.

Curvature products (Gauss-Newton, empirical Fisher or Hessian), damping relative to the
curvature's scale, conjugate gradients, then a step-size search on the calibration loss that
includes the plain masked params (step 0), so the result is never worse on that data.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import filters
from jaxprune.compensation._cg import cg, dot
from jaxprune.core import as_mask_leaf, at_path, describe, is_array, leaves_like
from jaxprune.scores import curvature as h

METHODS = ("ggn", "empirical_fisher", "hessian")
DAMPING_MODES = ("relative", "absolute")
F32 = jnp.float32
_NAME = "compensate"


@dataclasses.dataclass(frozen=True)
class CompensateInfo:
  """What :func:`compensate` did (returned with ``return_info=True``; a pytree, jit-able).

  Attributes:
    loss_masked: calibration loss of ``apply_masks(params, masks)`` (no compensation).
    loss: calibration loss of the returned params (``<= loss_masked``).
    step_size: the fraction of the CG step taken: 1, ½, ¼, …, or 0 when no step lowered
      the loss (the result is then exactly ``apply_masks(params, masks)``).
    cg_iterations: CG iterations run.
    negative_curvature: CG stopped on a direction of non-positive curvature (Hessian).
    damping: the absolute damping ``λ`` added to the curvature.
    curvature_scale: the estimated mean diagonal of the curvature over the kept weights.
    method: "ggn", "empirical_fisher" or "hessian" (static).

  >>> import jax.numpy as jnp
  >>> from jaxprune.compensation import compensate
  >>> loss = lambda p, x: jnp.mean((x @ p["w"] - x.sum(1)) ** 2)
  >>> x = jnp.array([[1., 1.], [1., 0.9]])
  >>> _, info = compensate(loss, {"w": jnp.ones(2)}, {"w": jnp.array([True, False])}, x,
  ...                      return_info=True)
  >>> type(info).__name__, float(info.loss) <= float(info.loss_masked)
  ('CompensateInfo', True)
  """

  loss_masked: jax.Array
  loss: jax.Array
  step_size: jax.Array
  cg_iterations: jax.Array
  negative_curvature: jax.Array
  damping: jax.Array
  curvature_scale: jax.Array
  method: str


jax.tree_util.register_dataclass(
    CompensateInfo, data_fields=["loss_masked", "loss", "step_size", "cg_iterations",
                                 "negative_curvature", "damping", "curvature_scale"],
    meta_fields=["method"])


def compensate(loss_fn, params, masks, *args, steps: int = 50, damping=0.01,
               damping_mode: str = "relative", method: str | None = None,
               gradient: bool = False, tol=1e-5, trainable=None, probes: int = 4, key=None,
               backtrack: int = 8, return_info: bool = False):
  """Updates the kept weights to make up for the pruned ones; never worse than plain masking.

  Around the dense ``params`` ``w`` the loss is modelled as
  ``L(w + δ) ≈ L(w) + gᵀδ + ½ δᵀ(A + λI)δ`` with ``A`` a curvature matrix. Pruned entries are
  forced to zero (``δ = −w`` there) and the kept entries solve
  ``(A_KK + λI) δ_K = A_KP w_P − g_K`` (the ``g`` term only with ``gradient=True``) by at most
  ``steps`` iterations of conjugate gradients on masked curvature-vector products (the model is
  linearised once; CG stops at ``‖r‖ ≤ tol·‖b‖`` or on non-positive curvature).

  Safety: ``λ`` is by default relative to the curvature's scale, ``λ = damping · mean diag(A_KK)``
  (the mean diagonal over the kept weights, estimated with ``probes`` Hutchinson probes), as
  SparseGPT does. Then the calibration loss ``loss_fn(·, *args)`` is evaluated at the kept
  weights moved by ``t·δ_K`` for ``t`` in ``0, 1, ½, …, 2^-backtrack`` (``t = 0`` is
  ``apply_masks(params, masks)``) and the lowest wins (ties go to plain masking), so **the
  returned params never have a higher loss on the given calibration data than plain masking**.
  This is a guarantee on that data only: use calibration examples like the ones the model will
  see (held out from training where possible).

  Methods (``A``): "ggn", the Gauss-Newton matrix (PSD; needs a :class:`jaxprune.scores.ModelLoss`);
  "empirical_fisher", ``mean_n g_n g_nᵀ`` from per-example gradients (PSD; any loss that is a
  mean over the examples of ``args``' arrays, which share a leading example axis; it vanishes
  where every example is fitted exactly, and then no step is taken);
  "hessian" (indefinite: CG may stop early; works for any loss, also one that closes over its
  data). Default: "ggn" for a ``ModelLoss``, "empirical_fisher" for another loss given a batch
  in ``args``, and "hessian" for a loss without ``args``.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``.
    params: the dense (trained) weights: any pytree.
    masks: pytree like ``params``: an array (bool, or any dtype with non-zero = kept) or None
      per leaf, e.g. ``jaxprune.masks.topk`` of one-shot scores of ``params``.
    *args: extra arguments of ``loss_fn``: the calibration batch, e.g. ``inputs, targets``.
    steps: maximum number of CG iterations (a fixed cap: jit-friendly).
    damping: ``>= 0``: with ``damping_mode="relative"`` (default) the fraction of the mean
      curvature diagonal added to it (0.01 as in SparseGPT; larger = smaller, safer steps);
      with ``"absolute"`` the ``λ`` itself.
    damping_mode: "relative" or "absolute" (see ``damping``).
    method: "ggn", "empirical_fisher", "hessian" or None (the default above).
    gradient: include the gradient term (a Newton step on the kept weights as well).
    tol: relative residual at which CG stops (None or 0: run all ``steps``).
    trainable: optional filter (``jaxprune.filters``) of the leaves that may change; default:
      every floating leaf. Other leaves only get their masks applied.
    probes: Rademacher probes of the curvature-scale estimate (relative damping only).
    key: ``jax.random`` key of the probes; default ``jax.random.key(0)`` (deterministic).
    backtrack: number of halvings of the step tried (>= 0; 0 tries the full step only).
    return_info: also return a :class:`CompensateInfo`.

  Returns:
    Params like ``params`` (their dtypes, pruned entries exactly 0), or ``(params, info)``.

  >>> import jax.numpy as jnp
  >>> loss = lambda p, x, y: jnp.mean((x @ p["w"] - y) ** 2)
  >>> x = jnp.array([[1., 1.], [1., 0.9]])
  >>> new, info = compensate(loss, {"w": jnp.array([1., 1.])}, {"w": jnp.array([1., 0.])},
  ...                        x, x @ jnp.array([1., 1.]), damping=0.0, method="hessian",
  ...                        return_info=True)
  >>> [round(v, 3) for v in new["w"].tolist()], float(info.step_size), info.method
  ([1.95, 0.0], 1.0, 'hessian')
  >>> float(info.loss) < float(info.loss_masked)
  True
  """
  steps = h.check_positive_int(steps, "steps", _NAME, minimum=0)
  probes = h.check_positive_int(probes, "probes", _NAME, minimum=1)
  backtrack = h.check_positive_int(backtrack, "backtrack", _NAME, minimum=0)
  _check_number(damping, "damping", "damping=0.01")
  _check_number(tol, "tol", "tol=1e-5", allow_none=True)
  tol = 0.0 if tol is None else tol
  if damping_mode not in DAMPING_MODES:
    raise ValueError(f"{_NAME}: damping_mode must be one of {DAMPING_MODES}; got "
                     f"{damping_mode!r}.")
  method = _resolve_method(loss_fn, method, args)
  s = h.split(params, _NAME)
  keep = _masks(s, params, masks)
  h.check_loss(loss_fn, s, args, _NAME)
  free = _trainable(s, params, trainable)
  matvec, grads = _operator(loss_fn, s, args, method, gradient)

  dtypes = [w.dtype for w in s.diff]
  product = lambda v: [h.as_f32(y) for y in matvec([x.astype(d) for x, d in zip(v, dtypes)])]

  def project(v):
    return [jnp.zeros_like(x) if not f else (x if m is None else jnp.where(m, x, 0.0))
            for x, m, f in zip(v, keep, free)]

  scale = _curvature_scale(product, project, s.diff, probes, key)
  lam = (jnp.asarray(damping, F32) * scale if damping_mode == "relative"
         else jnp.asarray(damping, F32))

  def operator(v):
    pv = project(v)
    return project([a + lam * x for a, x in zip(product(pv), pv)])

  pruned = [jnp.zeros(w.shape, F32) if m is None else jnp.where(m, 0.0, -h.as_f32(w))
            for w, m in zip(s.diff, keep)]
  rhs = [-a for a in product(pruned)]
  if grads is not None:
    rhs = [r - h.as_f32(g) for r, g in zip(rhs, grads)]
  delta, iterations, negative = cg(operator, project(rhs), steps, tol)

  def candidate(t):
    out = []
    for w, m, d, f in zip(s.diff, keep, delta, free):
      x = jnp.where(t > 0, (h.as_f32(w) + t * d).astype(w.dtype), w) if f else w
      out.append(x if m is None else jnp.where(m, x, jnp.zeros((), w.dtype)))
    return out

  loss_at = lambda diff: jnp.asarray(loss_fn(s.rebuild(diff), *args), F32)
  ts = jnp.asarray([0.0] + [0.5 ** i for i in range(backtrack + 1)], F32)
  losses = jax.lax.map(lambda t: loss_at(candidate(t)), ts)
  losses = jnp.where(jnp.isnan(losses), jnp.inf, losses)
  best = ts[jnp.argmin(losses)]  # first minimum: ties (and all-NaN) go to t = 0
  new = candidate(best)
  loss_new = loss_at(new)
  ok = loss_new <= losses[0]  # re-checked on the params actually returned
  masked = candidate(jnp.zeros((), F32))
  new = [jnp.where(ok, a, b) for a, b in zip(new, masked)]
  out = s.rebuild(new)
  if not return_info:
    return out
  info = CompensateInfo(
      loss_masked=losses[0], loss=jnp.where(ok, loss_new, losses[0]),
      step_size=jnp.where(ok, best, 0.0), cg_iterations=iterations,
      negative_curvature=negative,  # pyright: ignore[reportArgumentType]
      damping=lam, curvature_scale=scale, method=method)
  return out, info


def _operator(loss_fn, s, args, method, gradient):
  """``(matvec, grads or None)`` for the method (leaf lists in params' dtypes)."""
  f = lambda d: loss_fn(s.rebuild(d), *args)
  if method == "ggn":
    h.check_model(loss_fn, s, args, _NAME)
    grads = jax.grad(f)(s.diff) if gradient else None
    return h.ggn_operator(loss_fn, s, args, _NAME), grads
  if method == "hessian":
    grads, matvec = h.hessian_operator(loss_fn, s, args)
    return matvec, (grads if gradient else None)
  batched, rebuild, n = _examples(args)
  per_example = lambda d: jax.vmap(lambda *ex: loss_fn(s.rebuild(d), *rebuild(ex)))(*batched)
  _, jvp_fn = jax.linearize(per_example, s.diff)
  vjp_fn = jax.linear_transpose(jvp_fn, s.diff)
  matvec = lambda v: [x / n for x in vjp_fn(jvp_fn(v))[0]]
  return matvec, (jax.grad(f)(s.diff) if gradient else None)


def _curvature_scale(product, project, diff, probes, key):
  """``|mean diag(A_KK)|`` by Hutchinson over the kept, trainable entries (float32 scalar)."""
  key = jax.random.key(0) if key is None else key
  ones = project([jnp.ones(w.shape, F32) for w in diff])
  count = sum(jnp.sum(x) for x in ones)
  total = jnp.zeros((), F32)
  for k in jax.random.split(key, probes):
    keys = jax.random.split(k, len(diff))
    v = project([jax.random.rademacher(kk, w.shape, F32) for kk, w in zip(keys, diff)])
    total = total + dot(v, product(v))
  return jnp.abs(total) / probes / jnp.maximum(count, 1.0)


def _examples(args):
  """Arrays of ``args`` with a shared leading example axis, and how to rebuild one example."""
  leaves, treedef = jax.tree.flatten(args)
  index = [i for i, x in enumerate(leaves) if is_array(x) and x.ndim >= 1]
  sizes = {int(leaves[i].shape[0]) for i in index}
  if not index or len(sizes) != 1:
    shapes = [tuple(leaves[i].shape) for i in index]
    raise ValueError(
        f"{_NAME}(method='empirical_fisher') needs per-example gradients: args must hold "
        f"arrays sharing a leading example axis (e.g. inputs, targets); got array shapes "
        f"{shapes}. Pass the batch as args, or use method='hessian'.")

  def rebuild(batch):
    out = list(leaves)
    for i, x in zip(index, batch):
      out[i] = x[None]
    return jax.tree.unflatten(treedef, out)

  return [leaves[i] for i in index], rebuild, sizes.pop()


def _has_batch(args):
  leaves = [x for x in jax.tree.leaves(args) if is_array(x) and x.ndim >= 1]
  return bool(leaves) and len({int(x.shape[0]) for x in leaves}) == 1


def _check_number(value, name, example, allow_none=False):
  if value is None and allow_none:
    return
  is_real = (isinstance(value, (numbers.Real, np.number)) and not isinstance(value, bool)
             and not isinstance(value, (complex, np.complexfloating)))
  is_scalar_array = (is_array(value) and getattr(value, "shape", None) == ()
                     and jnp.issubdtype(getattr(value, "dtype"), jnp.floating))
  if not (is_real or is_scalar_array):
    raise TypeError(f"{_NAME}: {name} must be a real number >= 0; got {describe(value)} "
                    f"({value!r}). E.g. {example}.")
  if is_real and not float(value) >= 0.0:  # pyright: ignore[reportArgumentType]
    raise ValueError(f"{_NAME}: {name} must be >= 0; got {value!r}. E.g. {example}.")


def _resolve_method(loss_fn, method, args):
  if method is None:
    if isinstance(loss_fn, h.ModelLoss):
      return "ggn"
    if _has_batch(args):
      return "empirical_fisher"
    warnings.warn(
        "compensate: loss_fn is a plain callable without a batch in args, so the curvature is "
        "the indefinite Hessian: the result is never worse than plain masking on the "
        "calibration data but usually gains little. Pass the batch as args "
        "(compensate(loss_fn, params, masks, x, y): empirical Fisher) or a "
        "jaxprune.scores.ModelLoss (Gauss-Newton), or method='hessian' to silence this.",
        UserWarning, stacklevel=3)
    return "hessian"
  if method not in METHODS:
    raise ValueError(f"{_NAME}: method must be one of {METHODS} or None; got {method!r}.")
  if method == "ggn":
    h.require_model(loss_fn, method, _NAME)
  if method == "empirical_fisher":
    _examples(args)
  return method


def _masks(s, params, masks):
  """The mask (bool array or None) of each floating leaf, checked against the params."""
  aligned = leaves_like(params, masks, name="masks")
  out = []
  for i, (path, w, m) in enumerate(zip(s.paths, s.leaves, aligned)):
    if m is None:
      continue
    if i not in s.index:
      raise TypeError(f"{_NAME}: masks at {at_path(path)} is {describe(m)} but the params "
                      f"leaf there is {describe(w)}, not a floating array. Use None there.")
    try:
      aligned[i] = as_mask_leaf(path, m, w, what="masks")
    except (TypeError, ValueError) as e:
      raise type(e)(f"{_NAME}: {e}") from None
  for i in s.index:
    out.append(aligned[i])
  return out


def _trainable(s, params, trainable):
  if trainable is None:
    return [True] * len(s.index)
  f = filters.resolve(trainable)
  return [f(s.paths[i], s.leaves[i]) for i in s.index]
