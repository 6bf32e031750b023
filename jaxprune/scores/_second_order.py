"""Second-order saliencies: OBD, second-order Taylor, GraSP, and per-channel curvature.

All are float32 pytrees like ``params`` (higher = more important = kept) built from
Hessian/GGN-vector products. As the ``score`` of ``jaxprune.prune``, bind the loss and forward
the extras given to ``tx.update``, e.g.
``score=lambda params, batch, key: obd(loss_fn, params, *batch, key=key)``.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp

from jaxprune import filters
from jaxprune.core import at_path, describe, flatten_with_paths, is_array, leaves_like
from jaxprune.scores import curvature as h
from jaxprune.scores._diag import hessian_diag

_PRODUCTS = ("hessian", "ggn")


def obd(loss_fn, params, *args, key=None, probes: int = 16, method: str = "hutchinson",
        batch_size: int | None = None):
  """Optimal Brain Damage saliency ``½·diag(H)·w²``: the loss increase of removing one weight.

  The diagonal comes from :func:`hessian_diag` with the given ``method`` ("hutchinson", "ggn",
  "exact", "fisher" or "empirical_fisher"). With Hutchinson on an indefinite Hessian some
  estimates are negative (removing the weight is predicted to lower the loss): they rank
  lowest. Noisy diagonals (few probes) can rank worse than plain magnitude.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar`` (a ``ModelLoss`` for "ggn"/"fisher").
    params: any pytree.
    *args: extra arguments of ``loss_fn``.
    key, probes, method, batch_size: as in :func:`hessian_diag`.

  >>> import jax, jax.numpy as jnp
  >>> loss = lambda p: jnp.sum(jnp.array([4., 1.]) * p["w"] ** 2)  # diag H = 8, 2
  >>> obd(loss, {"w": jnp.array([1., 3.])}, method="exact")["w"].tolist()
  [4.0, 9.0]
  """
  diag = hessian_diag(loss_fn, params, *args, key=key, probes=probes, method=method,
                      batch_size=batch_size)
  s = h.split(params, "obd")
  d = leaves_like(params, diag, name="diag")
  return s.tree([0.5 * d[i] * jnp.square(h.as_f32(s.leaves[i])) for i in s.index])


def _check_product(method, fn_name):
  if method not in _PRODUCTS:
    raise ValueError(f"{fn_name}: method must be one of {_PRODUCTS}; got {method!r}.")


def _operators(loss_fn, s, args, method, fn_name):
  """``(grad, product)``: the gradient and ``v -> (g, A v)`` (``g`` is None for the GGN).

  For the Hessian, ``g`` and ``H v`` come together from one forward-over-reverse product.
  """
  grad = jax.grad(lambda d: loss_fn(s.rebuild(d), *args))
  if method == "hessian":
    return grad, lambda v: jax.jvp(grad, (s.diff,), (v,))
  model = h.require_model(loss_fn, method, fn_name)
  h.check_model(model, s, args, fn_name)
  matvec = h.ggn_operator(model, s, args, fn_name)
  return grad, lambda v: (None, matvec(v))


def taylor2(loss_fn, params, *args, method: str = "hessian"):
  """Second-order Taylor saliency ``|−g·w + ½·w·(A w)|`` with one curvature-vector product.

  ``g`` is the gradient and ``A`` the Hessian (``method="hessian"``: gradient and ``H w`` come
  together from one forward-over-reverse product) or the Gauss-Newton matrix (``"ggn"``,
  ``loss_fn`` a ``ModelLoss``). Each term is entry ``i``'s share of the loss change
  ``gᵀδ + ½δᵀAδ`` of the perturbation ``δ = −w``.

  >>> import jax.numpy as jnp
  >>> loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["w"])  # g = 2w + 1, H w = 2w
  >>> taylor2(loss, {"w": jnp.array([1., -2.])})["w"].tolist()
  [2.0, 2.0]
  """
  _check_product(method, "taylor2")
  s = h.split(params, "taylor2")
  h.check_loss(loss_fn, s, args, "taylor2")

  grad, product = _operators(loss_fn, s, args, method, "taylor2")
  g, aw = product(s.diff)
  g = grad(s.diff) if g is None else g
  return s.tree([jnp.abs(-h.as_f32(gi) * h.as_f32(w) + 0.5 * h.as_f32(w) * h.as_f32(a))
                 for gi, w, a in zip(g, s.diff, aw)])


def grasp(loss_fn, params, *args, method: str = "hessian", removal_order: bool = False):
  """GraSP (gradient signal preservation, Wang et al. 2020) score ``−w·(H g)``.

  This is the paper's score ``S = −w ⊙ H g``. GraSP *removes* the weights with the highest
  ``S`` (their removal preserves or increases gradient flow), whereas jaxprune's masks keep the
  highest scores; to prune exactly as GraSP does, pass ``removal_order=True``, which returns
  ``−S = w ⊙ H g`` so that ``jaxprune.masks.topk``/``global_topk`` remove what GraSP removes.
  Costs one gradient and one Hessian-vector product (``method="ggn"`` uses the Gauss-Newton
  matrix instead; ``loss_fn`` a ``ModelLoss``).

  >>> import jax.numpy as jnp
  >>> loss = lambda p: 0.5 * jnp.sum(p["w"] ** 2 * jnp.array([1., 3.]))  # H g = (w, 9 w)
  >>> grasp(loss, {"w": jnp.array([2., 1.])})["w"].tolist()
  [-4.0, -9.0]
  >>> grasp(loss, {"w": jnp.array([2., 1.])}, removal_order=True)["w"].tolist()
  [4.0, 9.0]
  """
  _check_product(method, "grasp")
  if not isinstance(removal_order, bool):
    raise TypeError(f"grasp: removal_order must be a bool; got {removal_order!r}.")
  s = h.split(params, "grasp")
  h.check_loss(loss_fn, s, args, "grasp")

  grad, product = _operators(loss_fn, s, args, method, "grasp")
  hg = product(grad(s.diff))[1]
  sign = 1.0 if removal_order else -1.0
  return s.tree([sign * h.as_f32(w) * h.as_f32(a) for w, a in zip(s.diff, hg)])


def _axes(path, ndim, axis):
  axes = axis if isinstance(axis, (tuple, list)) else (axis,)
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise ValueError(f"axis {a} is out of range for the leaf at {at_path(path)} with {ndim} "
                       "dimensions. Pass the channel axis of that leaf, or exclude it with "
                       "where=.")
    out.append(operator.index(a) % ndim)
  return tuple(sorted(set(out)))


def _per_channel(tree, axis, where, fn):
  """``fn(i, path, leaf, other_axes)`` on the selected leaves of ``tree``; None elsewhere."""
  paths, leaves, treedef = flatten_with_paths(tree)
  chosen = filters.select(tree, where)
  out = []
  for i, (path, x, c) in enumerate(zip(paths, leaves, chosen)):
    if not c:
      out.append(None)
      continue
    kept = _axes(path, x.ndim, axis)
    other = tuple(a for a in range(x.ndim) if a not in kept)
    out.append(fn(i, path, x, other))
  return treedef.unflatten(out)


def channel_trace(diag, axis=-1, *, where=None):
  """Hessian trace per channel: the sum of a curvature diagonal over all axes but ``axis``.

  Args:
    diag: a diagonal from :func:`hessian_diag` (or any per-entry scores).
    axis: the channel axis, or a tuple of axes (default: last, the output features).
    where: which leaves (default ``ndim >= 2``); others give None.

  Returns:
    Per selected leaf a float32 array of the kept axes' shape (one trace per channel).

  >>> import jax.numpy as jnp
  >>> channel_trace({"w": jnp.array([[1., 2.], [3., 4.]])})["w"].tolist()
  [4.0, 6.0]
  """
  return _per_channel(diag, axis, where, lambda i, path, d, other: jnp.sum(h.as_f32(d), other))


def channel_obd(params, diag, axis=-1, *, where=None):
  """Hessian-aware channel saliency ``½·(Tr H_c / n_c)·‖w_c‖²``, spread over the entries.

  The score of channel ``c`` (as in Hessian-aware pruning, HAP) uses the average diagonal
  curvature of the channel. It is returned per entry (``½·(Tr H_c / n_c)·w²``) so that
  ``jaxprune.masks.channels(scores, sparsity, axis, reduce="sum")`` ranks channels by it. For
  the diagonal (OBD) estimate of removing a channel instead, pass ``obd(...)`` scores to
  ``masks.channels(..., reduce="sum")``.

  Args:
    params: any pytree.
    diag: pytree like ``params``, e.g. from :func:`hessian_diag`.
    axis: the channel axis (or a tuple of axes) of each selected leaf.
    where: which leaves (default ``ndim >= 2``); others give None.

  >>> import jax.numpy as jnp
  >>> w = {"w": jnp.array([[1., 2.], [1., 0.]])}
  >>> s = channel_obd(w, {"w": jnp.array([[2., 1.], [4., 1.]])})  # traces 6, 2; n_c = 2
  >>> s["w"].sum(0).tolist()  # ½ · 3 · 2, ½ · 1 · 4
  [3.0, 2.0]
  """
  diags = leaves_like(params, diag, name="diag")

  def score(i, path, w, other):
    d = diags[i]
    if not is_array(d) or tuple(d.shape) != tuple(w.shape):
      raise ValueError(f"channel_obd: diag at {at_path(path)} must be an array of shape "
                       f"{tuple(w.shape)} like the params there; got {describe(d)}.")
    n = 1
    for a in other:
      n *= w.shape[a]
    mean = jnp.sum(h.as_f32(d), other, keepdims=True) / n
    return 0.5 * mean * jnp.square(h.as_f32(w))

  return _per_channel(params, axis, where, score)
