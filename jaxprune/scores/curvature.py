"""Hessian-vector and Gauss-Newton-vector products (never a materialised Hessian).

Curvature is reached only through products: ``hvp`` is forward-over-reverse
(``jax.jvp(jax.grad(f))``); ``ggn_vp`` is ``Jᵀ H_out J v`` for a loss split into a model and a
loss on its outputs (:class:`ModelLoss`). Only floating array leaves of ``params`` are
differentiated; other leaves (ints, None, Python scalars) are held fixed and come back as
``None``.

Besides :func:`hvp`, :func:`ggn_vp` and :class:`ModelLoss` (re-exported by ``jaxprune.scores``),
this public module holds the pieces that curvature-based methods share (``jaxprune.scores``'s
diagonals and ``jaxprune.compensate``): :func:`split` of params into differentiated leaves,
:func:`hessian_operator` / :func:`ggn_operator` (matrix-free products on that split), and the
argument checks that name the calling function in their errors.

>>> import jax.numpy as jnp
>>> from jaxprune.scores import curvature
>>> s = curvature.split({"w": jnp.array([1.0, 2.0]), "step": 3}, "example")
>>> grads, product = curvature.hessian_operator(
...     lambda p: jnp.sum(p["w"] ** 3), s, ())
>>> product([jnp.array([1.0, 0.0])])[0]
Array([6., 0.], dtype=float32)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxprune.core import (
    at_least_f32, at_path, check_int, describe, flatten_with_paths, is_array, is_floating,
    leaves_like)

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class ModelLoss:
  """A loss split into a model and a loss on its outputs, for Gauss-Newton curvature.

  Calling it is the loss: ``ModelLoss(apply_fn, output_loss)(params, inputs, *targets) ==
  output_loss(apply_fn(params, inputs), *targets)``, so it can be passed wherever a
  ``loss_fn(params, *args)`` is expected; the Gauss-Newton methods (``method="ggn"``,
  ``"fisher"``) need this split. ``output_loss`` should be a mean over the examples (leading
  axis) and convex in the outputs (cross-entropy, squared error) for the GGN to be PSD.

  Attributes:
    apply_fn: ``(params, inputs) -> outputs`` (any pytree of outputs).
    output_loss: ``(outputs, *targets) -> scalar``.

  >>> import jax.numpy as jnp
  >>> model = ModelLoss(lambda p, x: x @ p["w"], lambda y, t: jnp.mean((y - t) ** 2))
  >>> float(model({"w": jnp.ones((2, 1))}, jnp.ones((3, 2)), jnp.zeros((3, 1))))
  4.0
  """

  apply_fn: Callable[..., Any]
  output_loss: Callable[..., Any]

  def __call__(self, params, inputs, *targets):
    return self.output_loss(self.apply_fn(params, inputs), *targets)


@dataclasses.dataclass(frozen=True)
class Split:
  """The floating leaves of ``params`` (differentiated) and how to put them back."""

  paths: list
  leaves: list
  treedef: Any
  index: tuple  # positions of the floating leaves

  @property
  def diff(self) -> list:
    return [self.leaves[i] for i in self.index]

  def rebuild(self, diff) -> Any:
    """``params`` with the floating leaves replaced by ``diff``."""
    out = list(self.leaves)
    for i, d in zip(self.index, diff):
      out[i] = d
    return self.treedef.unflatten(out)

  def tree(self, values) -> Any:
    """A pytree like ``params`` holding ``values`` at floating leaves and None elsewhere."""
    out = [None] * len(self.leaves)
    for i, v in zip(self.index, values):
      out[i] = v
    return self.treedef.unflatten(out)


def split(params, fn_name: str) -> Split:
  """Splits ``params`` into floating leaves and the rest; errors when none is floating."""
  paths, leaves, treedef = flatten_with_paths(params)
  index = tuple(i for i, x in enumerate(leaves) if is_floating(x))
  if not index:
    seen = [f"{p}: {describe(x)}" for p, x in zip(paths, leaves)][:10]
    raise ValueError(
        f"{fn_name}: params have no floating array leaf to differentiate; leaves seen: {seen}. "
        "Pass the model parameters (float32/bfloat16/float16 arrays).")
  return Split(paths, leaves, treedef, index)


def check_callable(fn, name: str, fn_name: str) -> None:
  if not callable(fn):
    raise TypeError(f"{fn_name}: {name} must be a callable; got {describe(fn)}.")


def check_scalar(fn, fn_args, name: str, fn_name: str, hint: str) -> None:
  """Checks (by abstract evaluation, before any tracing of derivatives) that fn returns a scalar."""
  check_callable(fn, name, fn_name)
  out = jax.eval_shape(fn, *fn_args)
  if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()
          and jnp.issubdtype(out.dtype, jnp.floating)):
    got = (f"a {type(out).__name__} of {len(out)} values" if isinstance(out, (tuple, list))
           else f"shape={getattr(out, 'shape', '?')}, dtype={getattr(out, 'dtype', '?')}")
    raise ValueError(
        f"{fn_name}: {name} must return a floating scalar (shape ()); got {got}. {hint}")


LOSS_HINT = ("Reduce the loss to one number, e.g. return jnp.mean(per_example_losses); for a "
             "(loss, aux) pair pass lambda p, *a: loss_fn(p, *a)[0].")


def vector_leaves(s: Split, vector, name: str, fn_name: str) -> list:
  """The leaves of ``vector`` at the floating leaves of params, checked and cast to their dtype."""
  aligned = leaves_like(s.treedef.unflatten(s.leaves), vector, name=name)
  out = []
  for i in s.index:
    path, w, v = s.paths[i], s.leaves[i], aligned[i]
    if not is_array(v):
      raise TypeError(f"{fn_name}: {name} at {at_path(path)} must be an array shaped like the "
                      f"params there {tuple(w.shape)}; got {describe(v)}.")
    if tuple(v.shape) != tuple(w.shape):
      raise ValueError(
          f"{fn_name}: {name} at {at_path(path)} has shape {tuple(v.shape)} but params there "
          f"have shape {tuple(w.shape)}. Build {name} with jax.tree.map over params.")
    out.append(jnp.asarray(v).astype(w.dtype))
  return out


def hessian_operator(loss_fn, s: Split, args):
  """``(grads, matvec)``: the gradient at params and the linear map ``v -> H v`` (leaf lists).

  The forward-over-reverse linearisation is computed once; each ``matvec`` call reuses it.
  """
  f = lambda d: loss_fn(s.rebuild(d), *args)
  return jax.linearize(jax.grad(f), s.diff)


def ggn_operator(model: ModelLoss, s: Split, args, fn_name: str):
  """The linear map ``v -> Jᵀ H_out J v`` over leaf lists, with the model linearised once."""
  inputs, rest = split_model_args(args, fn_name)
  out, jvp_fn = jax.linearize(lambda d: model.apply_fn(s.rebuild(d), inputs), s.diff)
  vjp_fn = jax.linear_transpose(jvp_fn, s.diff)
  out_grad = jax.grad(lambda o: model.output_loss(o, *rest))

  def matvec(v):
    jv = jvp_fn(v)
    return vjp_fn(jax.jvp(out_grad, (out,), (jv,))[1])[0]

  return matvec


def split_model_args(args, fn_name: str):
  if not args:
    raise ValueError(f"{fn_name}: a ModelLoss needs the inputs (and targets) as extra args: "
                     "(params, inputs, *targets); got no args.")
  return args[0], args[1:]


def require_model(loss_fn, method: str, fn_name: str) -> ModelLoss:
  if not isinstance(loss_fn, ModelLoss):
    raise TypeError(
        f"{fn_name}(method={method!r}) needs the loss split into model and output loss; got "
        f"loss_fn={describe(loss_fn)}. Pass jaxprune.scores.ModelLoss(apply_fn, output_loss) "
        "with apply_fn(params, inputs) -> outputs and output_loss(outputs, *targets) -> "
        "scalar, or use method='hessian'/'hutchinson'.")
  return loss_fn


def check_loss(loss_fn, s: Split, args, fn_name: str) -> None:
  """Static checks of a loss: callable, scalar output; for a ModelLoss, the output loss too."""
  check_scalar(loss_fn, (s.rebuild(s.diff),) + tuple(args), "loss_fn", fn_name, LOSS_HINT)


def check_model(model: ModelLoss, s: Split, args, fn_name: str) -> None:
  inputs, rest = split_model_args(args, fn_name)
  check_callable(model.apply_fn, "apply_fn", fn_name)
  out = jax.eval_shape(model.apply_fn, s.rebuild(s.diff), inputs)
  check_scalar(model.output_loss, (out,) + tuple(rest), "output_loss", fn_name, LOSS_HINT)


def check_positive_int(value, name: str, fn_name: str, minimum: int = 1) -> int:
  """``core.check_int`` with this module's argument order (kept for its callers)."""
  return int(check_int(value, name, minimum=minimum, context=fn_name))


as_f32 = at_least_f32  # the one float-cast helper, from core


def hvp(loss_fn, params, vector, *args):
  """Hessian-vector product ``H v`` of ``loss_fn`` at ``params`` (forward-over-reverse).

  Costs about two gradient evaluations; the Hessian is never formed.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``.
    params: any pytree; only its floating array leaves are differentiated.
    vector: pytree like ``params`` (arrays at the floating leaves).
    *args: extra arguments of ``loss_fn`` (e.g. a batch).

  Returns:
    ``H v`` as a pytree like ``params`` (params' dtypes; None at non-floating leaves).

  >>> import jax.numpy as jnp
  >>> loss = lambda p: jnp.sum(p["w"] ** 3)  # H = diag(6 w)
  >>> hvp(loss, {"w": jnp.array([1., 2.])}, {"w": jnp.array([1., 1.])})["w"].tolist()
  [6.0, 12.0]
  """
  s = split(params, "hvp")
  v = vector_leaves(s, vector, "vector", "hvp")
  check_loss(loss_fn, s, args, "hvp")
  f = lambda d: loss_fn(s.rebuild(d), *args)
  return s.tree(jax.jvp(jax.grad(f), (s.diff,), (v,))[1])


def ggn_vp(apply_fn, output_loss, params, vector, *args):
  """Generalised Gauss-Newton-vector product ``Jᵀ H_out J v``.

  ``J`` is the Jacobian of ``apply_fn(params, inputs)`` with respect to params and ``H_out``
  the Hessian of ``output_loss`` with respect to the outputs. The GGN is PSD when
  ``output_loss`` is convex in the outputs, unlike the Hessian; it equals the Fisher for
  softmax cross-entropy and squared error. Costs one linearisation plus a JVP and a VJP.

  Args:
    apply_fn: ``(params, inputs) -> outputs``.
    output_loss: ``(outputs, *targets) -> scalar``.
    params: any pytree; only floating array leaves are differentiated.
    vector: pytree like ``params``.
    *args: ``inputs, *targets``: the first goes to ``apply_fn``, the rest to ``output_loss``.

  Returns:
    A pytree like ``params`` (None at non-floating leaves).

  >>> import jax.numpy as jnp
  >>> f = lambda p, x: jnp.tanh(x @ p["w"])
  >>> mse = lambda y, t: 0.5 * jnp.sum((y - t) ** 2)
  >>> w = {"w": jnp.zeros((2, 1))}  # J = x at w = 0, so GGN = xᵀx
  >>> ggn_vp(f, mse, w, {"w": jnp.ones((2, 1))}, jnp.eye(2), jnp.ones((2, 1)))["w"].tolist()
  [[1.0], [1.0]]
  """
  model = ModelLoss(apply_fn, output_loss)
  s = split(params, "ggn_vp")
  v = vector_leaves(s, vector, "vector", "ggn_vp")
  check_model(model, s, args, "ggn_vp")
  return s.tree(ggn_operator(model, s, args, "ggn_vp")(v))
