"""Per-layer one-shot pruning of one ``(in, out)`` kernel: SparseGPT, Wanda and magnitude.

The paper's rows (output units) are the kernel's columns here: flax stores ``y = x @ w`` with
``w`` of shape ``(in, out)``. N:M groups always run along the inputs (axis 0), inside each
output unit, which is the layout sparse tensor cores use for ``y = x @ w``.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxprune import masks as _masks
from jaxprune.core import is_tracer
from jaxprune.oneshot import _checks, _obs, _select


def sparsegpt(w, hessian, sparsity=None, *, n=None, m=None, block: int = 128,
              damping: float = 0.01, bits: int | None = None, mask=None):
  """SparseGPT (Frantar & Alistarh, 2023): OBS pruning of one layer with lazy block updates.

  Minimises ``‖X w − X ŵ‖²`` over the kept weights for ``hessian = 2XᵀX/n`` (any positive
  scale gives the same result): with ``U`` the upper Cholesky factor of ``(H + λI)⁻¹``, the
  inputs are visited in order; inside each block of ``block`` inputs the pruned entries are
  those with the smallest ``ŵ² / U_cc²`` (chosen once per block for unstructured sparsity,
  per group of ``m`` for N:M), and each pruned (or quantised) input's error is spread over
  the later inputs of the same output unit. Updates are applied lazily, by matrix products
  per block and per 16-input chunk (see ``jaxprune/oneshot/_obs.py``).

  Counts are exact: unstructured keeps exactly ``size - round(sparsity·size)`` entries of the
  whole kernel (spread over blocks in proportion to their size; within a block the
  selection is over all output units, as in the paper); N:M keeps exactly ``n`` of every
  ``m`` consecutive inputs of every output unit. Inputs that never fired (``H_ii = 0``) have
  no effect on the calibration outputs: they get ``H_ii = 1``, no coupling, and are ranked by
  their magnitude; they are not zeroed unless pruned.

  Args:
    w: kernel ``(in, out)``, any float dtype (computed in float32, returned in ``w.dtype``).
    hessian: ``(in, in)`` symmetric PSD matrix, e.g. ``2XᵀX/n`` of the layer's inputs.
    sparsity: fraction of zeros in [0, 1] (static); None with ``n``/``m``.
    n, m: N:M sparsity (keep ``n`` of every ``m`` inputs per output unit); ``m`` must divide
      ``in`` and ``block``.
    block: inputs per lazy-update block (128 as in the paper); need not divide ``in``.
    damping: ``λ = damping · mean(diag H)`` added to the diagonal (relative).
    bits: None, or quantise the kept weights jointly to a symmetric ``bits``-bit grid per
      output unit (round to nearest; the grid is ``max|w|/(2^(bits-1)-1)`` of each output
      unit of the input kernel) while pruning, as in the paper's joint mode.
    mask: optional fixed bool mask ``(in, out)`` (True = kept) instead of choosing one, e.g. a
      Wanda mask (give no sparsity/n/m then). Without ``bits`` the kept weights are the exact
      least-squares optimum ``min ‖X w − X ŵ‖²`` (damped) with the pruned ones at 0, solved
      per output unit; with ``bits`` the paper's sequential update (each input's error moves
      to later inputs only) quantises on the way.

  Returns:
    ``(new_w, mask)``: the updated kernel with exact zeros where ``mask`` (bool, True = kept)
    is False.

  >>> import jax, jax.numpy as jnp
  >>> x = jax.random.normal(jax.random.key(0), (64, 8))
  >>> w = jax.random.normal(jax.random.key(1), (8, 4))
  >>> new_w, mask = sparsegpt(w, 2 * x.T @ x / 64, 0.5, block=4)
  >>> int(mask.sum()), bool(jnp.all(jnp.where(mask, True, new_w == 0)))
  (16, True)
  """
  fn = "oneshot.sparsegpt"
  _checks.kernel(w, fn)
  if mask is None:
    s, n, m = _checks.pattern(sparsity, n, m, fn=fn)
  elif sparsity is not None or n is not None or m is not None:
    raise ValueError(f"{fn}: give either mask= (a fixed mask) or sparsity=/n=,m=; got both.")
  elif getattr(mask, "shape", None) != tuple(w.shape):
    raise ValueError(f"{fn}: mask must be a bool array of the kernel's shape {tuple(w.shape)}; "
                     f"got {_shape(mask)}.")
  else:
    s, mask = None, jnp.asarray(mask, bool)
  block = _checks.block_size(block, fn)
  damping = _checks.nonneg(damping, "damping", fn)
  bits = _checks.bits(bits, fn)
  d_in, d_out = w.shape
  if getattr(hessian, "shape", None) != (d_in, d_in):
    raise ValueError(f"{fn}: hessian must have shape (in, in) = ({d_in}, {d_in}) for a kernel "
                     f"of shape {tuple(w.shape)}; got {_shape(hessian)}.")
  _checks.groups(n, m, d_in, fn, block=block)
  h = _obs.damped(jnp.asarray(hessian, jnp.float32), damping)
  wf = jnp.asarray(w, jnp.float32)
  if mask is not None and bits is None:
    new_w, ok = _obs.refit(wf, h, mask, kept_max=_obs.kept_bound(mask))
  else:
    keeps = None
    if mask is None and n is None:
      keep = int(_masks.keep_count(d_in * d_out, s))
      keeps = jnp.asarray(_obs.block_keeps(d_in, d_out, block, keep), jnp.int32)
    new_w, mask, ok = _obs.solve(wf, h, keeps, mask, n=n, m=m, block=block, bits=bits)
  if not is_tracer(ok) and not bool(ok):
    raise ValueError(f"{fn}: the damped hessian is not positive definite (Cholesky failed); "
                     f"increase damping (now {damping}) or collect more calibration data.")
  return new_w.astype(w.dtype), mask


def _shape(x):
  return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def wanda(w, input_norms, sparsity=None, *, n=None, m=None):
  """Wanda (Sun et al., 2023): prune by ``|w_ij|·‖x_i‖`` within each output unit.

  No weight update. Unstructured: every output unit (column of ``w``) keeps exactly
  ``in - round(sparsity·in)`` inputs, ties to the lower input index; N:M: ``n`` of every
  ``m`` consecutive inputs of every output unit.

  Args:
    w: kernel ``(in, out)``.
    input_norms: ``‖x_i‖`` per input feature, shape ``(in,)`` or ``(in, 1)`` (as returned by
      :func:`jaxprune.scores.input_norms`).
    sparsity: fraction of zeros in [0, 1]; None with ``n``/``m``.
    n, m: N:M sparsity along the inputs.

  Returns:
    ``(new_w, mask)`` with ``new_w = where(mask, w, 0)``.

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[1., 1.], [2., -3.], [3., 1.]])
  >>> new_w, mask = wanda(w, jnp.array([10., 1., 1.]), 1 / 3)
  >>> mask.tolist()
  [[True, True], [False, True], [True, False]]
  """
  fn = "oneshot.wanda"
  _checks.kernel(w, fn)
  s, n, m = _checks.pattern(sparsity, n, m, fn=fn)
  norms = jnp.asarray(input_norms)
  if norms.shape not in ((w.shape[0],), (w.shape[0], 1)):
    raise ValueError(f"{fn}: input_norms must have shape ({w.shape[0]},) or ({w.shape[0]}, 1), "
                     f"one norm per input of the (in, out) kernel {tuple(w.shape)}; got "
                     f"{tuple(norms.shape)}.")
  score = jnp.abs(jnp.asarray(w, jnp.float32)) * norms.reshape(-1, 1).astype(jnp.float32)
  mask = select(score, s, n, m, per="output", fn=fn)
  return jnp.where(mask, w, jnp.zeros((), w.dtype)), mask


def magnitude(w, sparsity=None, *, n=None, m=None, per: str = "output"):
  """Magnitude pruning of one kernel: per output unit (default) or per layer; or N:M.

  >>> import jax.numpy as jnp
  >>> magnitude(jnp.array([[1., -4.], [3., 2.]]), 0.5, per="layer")[1].tolist()
  [[False, True], [True, False]]
  """
  fn = "oneshot.magnitude"
  _checks.kernel(w, fn)
  s, n, m = _checks.pattern(sparsity, n, m, fn=fn)
  mask = select(jnp.abs(jnp.asarray(w, jnp.float32)), s, n, m, per=per, fn=fn)
  return jnp.where(mask, w, jnp.zeros((), w.dtype)), mask


def select(score, s, n, m, *, per: str, fn: str):
  """Exact mask of a 2-D ``(in, out)`` score: per output unit, per layer, or N:M on inputs."""
  if per not in ("output", "layer"):
    raise ValueError(f"{fn}: per must be 'output' (each output unit keeps the same count) or "
                     f"'layer' (one count for the whole kernel); got {per!r}.")
  if n is not None:
    _checks.groups(n, m, score.shape[0], fn)
    return _masks.n_of_m({"s": score}, n, m, axis=0)["s"]
  if per == "layer":
    return _select.top_flat(score, _masks.keep_count(score.size, s))
  return _select.top_per_column(score, _masks.keep_count(score.shape[0], s))
