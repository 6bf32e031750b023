"""Data-free pruning at initialisation: SynFlow (Tanaka et al., 2020)."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core import at_path, describe, is_array, leaves_like
from jaxprune.scores import curvature as h


def _check_shape(input_shape):
  shape = (input_shape,) if isinstance(input_shape, numbers.Integral) else input_shape
  if (not isinstance(shape, (tuple, list)) or not shape
      or not all(isinstance(d, (numbers.Integral, np.integer)) and int(d) >= 1 for d in shape)):
    raise TypeError(f"synflow: input_shape must be a tuple of positive ints including the batch "
                    f"axis, e.g. (1, 784); got {input_shape!r}.")
  return tuple(int(d) for d in shape)


def synflow(apply_fn, params, input_shape, *, masks=None, dtype=jnp.float32):
  """SynFlow scores ``|θ| ⊙ ∂R/∂|θ|`` with ``R = Σ apply_fn(|θ|, 1)``: no data needed.

  The network is evaluated with every weight replaced by its absolute value (pruned entries of
  ``masks`` by 0) on an all-ones input, so that with ReLU-like activations it is linear in
  each weight; the score is the "synaptic flow" through each weight. Use models in inference
  mode (batch norm with running statistics). Computed in ``dtype`` (float32): ``R`` grows
  with depth and can overflow in bf16/f16; for very deep nets use float64 (``jax_enable_x64``).

  Args:
    apply_fn: ``(params, inputs) -> outputs`` (any pytree of outputs).
    params: any pytree; floating leaves are scored, others held fixed.
    input_shape: shape of the all-ones input, batch axis included, e.g. ``(1, 784)``.
    masks: optional masks (True = kept) of an earlier round.
    dtype: the dtype of the computation and of the scores.

  Returns:
    Nonnegative scores like ``params`` (None at non-floating leaves). For the iterative
    algorithm of the paper, see :func:`jaxprune.transforms.synflow_masks`.

  >>> import jax.numpy as jnp
  >>> apply = lambda p, x: x @ p["a"] @ p["b"]
  >>> p = {"a": jnp.array([[1., -2.]]), "b": jnp.array([[3.], [1.]])}
  >>> synflow(apply, p, (1, 1))["a"].tolist()  # paths 1*3 and 2*1
  [[3.0, 2.0]]
  """
  h.check_callable(apply_fn, "apply_fn", "synflow")
  shape = _check_shape(input_shape)
  s = h.split(params, "synflow")
  keep = [None] * len(s.leaves) if masks is None else leaves_like(params, masks, name="masks")
  flows = []
  for i in s.index:
    w = jnp.abs(s.leaves[i]).astype(dtype)
    m = keep[i]
    if m is not None:
      if not is_array(m) or tuple(m.shape) != tuple(w.shape):
        raise ValueError(f"synflow: masks at {at_path(s.paths[i])} must be a bool array of shape "
                         f"{tuple(w.shape)}; got {describe(m)}.")
      w = jnp.where(m, w, jnp.zeros((), dtype))
    flows.append(w)

  def total(d):
    out = apply_fn(s.rebuild(d), jnp.ones(shape, dtype))
    return sum(jnp.sum(o.astype(dtype)) for o in jax.tree.leaves(out))

  h.check_scalar(total, (flows,), "the SynFlow objective", "synflow",
                 "apply_fn must return arrays.")
  grads = jax.grad(total)(flows)
  return s.tree([w * g for w, g in zip(flows, grads)])
