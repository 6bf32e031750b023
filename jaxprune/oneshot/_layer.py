"""Per-layer one-shot pruning of one ``(in, out)`` kernel: SparseGPT, Wanda and magnitude.

The paper's rows (output units) are the kernel's columns here: flax stores ``y = x @ w`` with
``w`` of shape ``(in, out)``. N:M groups always run along the inputs (axis 0), inside each
output unit, which is the layout sparse tensor cores use for ``y = x @ w``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxprune import masks as _masks
from jaxprune.core import is_tracer
from jaxprune.oneshot import _checks


def sparsegpt(w, hessian, sparsity=None, *, n=None, m=None, block: int = 128,
              damping: float = 0.01, bits: int | None = None, mask=None):
  """SparseGPT (Frantar & Alistarh, 2023): OBS pruning of one layer with lazy block updates.

  Minimises ``‖X w − X ŵ‖²`` over the kept weights for ``hessian = 2XᵀX/n`` (any positive
  scale gives the same result): with ``U`` the upper Cholesky factor of ``(H + λI)⁻¹``, the
  inputs are visited in order; inside each block of ``block`` inputs the pruned entries are
  those with the smallest ``ŵ² / U_cc²`` (chosen once per block for unstructured sparsity,
  per group of ``m`` for N:M), and each pruned (or quantised) input's error is spread over
  the later inputs of the same output unit. Updates of later blocks are batched (one matrix
  product per block).

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
    block: inputs per lazy-update block (128 as in the paper).
    damping: ``λ = damping · mean(diag H)`` added to the diagonal (relative).
    bits: None, or quantise the kept weights jointly to a symmetric ``bits``-bit grid per
      output unit (round to nearest; the grid is ``max|w|/(2^(bits-1)-1)`` of each output
      unit of the input kernel) while pruning, as in the paper's joint mode.
    mask: optional fixed bool mask ``(in, out)`` (True = kept) instead of choosing one, e.g. a
      Wanda mask: only the reconstruction runs (give no sparsity/n/m then). The update is
      the paper's sequential one (each pruned input's error moves only to later inputs), which
      equals the least-squares optimum over the kept weights when, in every output unit, the
      pruned inputs come before the kept ones, and approximates it otherwise.

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
    mask_t = None
  elif sparsity is not None or n is not None or m is not None:
    raise ValueError(f"{fn}: give either mask= (a fixed mask) or sparsity=/n=,m=; got both.")
  elif getattr(mask, "shape", None) != tuple(w.shape):
    raise ValueError(f"{fn}: mask must be a bool array of the kernel's shape {tuple(w.shape)}; "
                     f"got {_shape(mask)}.")
  else:
    s, n, m, mask_t = None, None, None, jnp.asarray(mask, bool).T
  block = _checks.block_size(block, fn)
  damping = _checks.nonneg(damping, "damping", fn)
  bits = _checks.bits(bits, fn)
  d_in = w.shape[0]
  if getattr(hessian, "shape", None) != (d_in, d_in):
    raise ValueError(f"{fn}: hessian must have shape (in, in) = ({d_in}, {d_in}) for a kernel "
                     f"of shape {tuple(w.shape)}; got {_shape(hessian)}.")
  _checks.groups(n, m, d_in, fn, block=block)
  keeps = None
  if mask_t is None and n is None:  # kept entries per block; exact in total
    size, d_out, keeps = d_in * w.shape[1], w.shape[1], []
    for i1 in range(0, d_in, block):
      i2 = min(i1 + block, d_in)
      pruned = _pruned(size, s, d_out * i2) - _pruned(size, s, d_out * i1)
      keeps.append(d_out * (i2 - i1) - pruned)
    keeps = jnp.asarray(keeps, jnp.int32)
  new_w, mask, ok = _sparsegpt(w, jnp.asarray(hessian, jnp.float32), mask_t, keeps, n=n, m=m,
                                block=block, damping=damping, bits=bits)
  if not is_tracer(ok) and not bool(ok):
    raise ValueError(f"{fn}: the damped hessian is not positive definite (Cholesky failed); "
                     f"increase damping (now {damping}) or collect more calibration data.")
  return new_w, mask


@functools.partial(jax.jit, static_argnames=("n", "m", "block", "damping", "bits"))
def _sparsegpt(w, hessian, mask_t, keeps, *, n, m, block, damping, bits):
  d_in, d_out = w.shape
  u = _inverse_cholesky(hessian, damping)
  ok = jnp.all(jnp.isfinite(u))
  wt = w.astype(jnp.float32).T  # (out, in): the paper's orientation
  scale = None if bits is None else _grid(wt, bits)
  mask_blocks = []
  for b, i1 in enumerate(range(0, d_in, block)):
    i2 = min(i1 + block, d_in)
    w1, u1 = wt[:, i1:i2], u[i1:i2, i1:i2]
    if mask_t is not None:
      mask1 = mask_t[:, i1:i2]
      q1, err = _unstructured_block(w1, u1, mask1, scale, bits)
    elif n is None:
      score = jnp.square(w1) / jnp.square(jnp.diag(u1))[None, :]
      mask1 = top_flat(score, keeps[b])
      q1, err = _unstructured_block(w1, u1, mask1, scale, bits)
    else:
      q1, mask1, err = _nm_block(w1, u1, scale, n=n, m=m, bits=bits)
    wt = wt.at[:, i1:i2].set(q1)
    if i2 < d_in:
      wt = wt.at[:, i2:].add(-err @ u[i1:i2, i2:])
    mask_blocks.append(mask1)
  mask = jnp.concatenate(mask_blocks, axis=1).T
  return jnp.where(mask, wt.T, 0.0).astype(w.dtype), mask, ok


def _pruned(size, s, upto):
  """Entries pruned among the first ``upto`` (of ``size``): exact at ``upto == size``."""
  if upto >= size:
    return size - _masks.keep_count(size, s)
  return int(round(s * upto))


def _shape(x):
  return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _inverse_cholesky(h, damping):
  """Upper ``U`` with ``UᵀU = (H + λI)⁻¹``, dead inputs (``H_ii = 0``) decoupled."""
  diag = jnp.diag(h)
  dead = diag == 0
  h = jnp.where(dead[:, None] | dead[None, :], 0.0, h)
  h = h + jnp.diag(jnp.where(dead, 1.0, 0.0))
  live = jnp.sum(~dead)
  mean = jnp.where(live > 0, jnp.sum(jnp.where(dead, 0.0, diag)) / jnp.maximum(live, 1), 1.0)
  h = h + damping * mean * jnp.eye(h.shape[0], dtype=h.dtype)
  low = jnp.linalg.cholesky(h)
  eye = jnp.eye(h.shape[0], dtype=h.dtype)
  hinv = jax.scipy.linalg.cho_solve((low, True), eye)
  hinv = (hinv + hinv.T) / 2
  return jnp.linalg.cholesky(hinv).T


def _grid(wt, bits):
  """Per-output-unit symmetric round-to-nearest step: ``max|w| / (2^(bits-1) - 1)``."""
  top = jnp.max(jnp.abs(wt), axis=1, keepdims=True)
  return jnp.where(top > 0, top / (2 ** (bits - 1) - 1), 1.0)


def _quantise(q, scale, bits):
  if bits is None:
    return q
  qmax = 2 ** (bits - 1) - 1
  return jnp.clip(jnp.round(q / scale[:, 0]), -qmax, qmax) * scale[:, 0]


def _column(i, carry, keep_col, scale, bits):
  """Fixes input ``i`` (pruned or quantised) and spreads its error over the later inputs."""
  w1, u1, errs = carry
  col = lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
  q = jnp.where(keep_col, _quantise(col, scale, bits), 0.0)
  err = (col - q) / u1[i, i]
  # U is upper triangular: row i is 0 before column i, so this only moves inputs >= i and
  # sets column i to q exactly (up to rounding).
  w1 = w1 - err[:, None] * u1[i][None, :]
  w1 = lax.dynamic_update_index_in_dim(w1, q, i, axis=1)
  errs = lax.dynamic_update_index_in_dim(errs, err, i, axis=1)
  return w1, u1, errs


def _unstructured_block(w1, u1, mask1, scale, bits):
  def body(i, carry):
    keep_col = lax.dynamic_index_in_dim(mask1, i, axis=1, keepdims=False)
    return _column(i, carry, keep_col, scale, bits)
  w1, _, errs = lax.fori_loop(0, w1.shape[1], body, (w1, u1, jnp.zeros_like(w1)))
  return w1, errs


def _nm_block(w1, u1, scale, *, n, m, bits):
  diag = jnp.square(jnp.diag(u1))

  def group(g, state):
    carry, mask1 = state
    start = g * m
    wg = lax.dynamic_slice_in_dim(carry[0], start, m, axis=1)
    score = jnp.square(wg) / lax.dynamic_slice_in_dim(diag, start, m)[None, :]
    keep = _masks.n_of_m({"s": score}, n, m, axis=1)["s"]
    mask1 = lax.dynamic_update_slice_in_dim(mask1, keep, start, axis=1)
    for j in range(m):
      carry = _column(start + j, carry, keep[:, j], scale, bits)
    return carry, mask1

  init = ((w1, u1, jnp.zeros_like(w1)), jnp.zeros(w1.shape, bool))
  (w1, _, errs), mask1 = lax.fori_loop(0, w1.shape[1] // m, group, init)
  return w1, mask1, errs


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
    return top_flat(score, _masks.keep_count(score.size, s))  # pyright: ignore
  return per_output(score, _masks.keep_count(score.shape[0], s))  # pyright: ignore


def top_flat(score, keep: int):
  """Keeps the ``keep`` best entries of ``score``; ties to the lower row-major index."""
  return per_output(score.reshape(-1, 1), keep).reshape(score.shape)


def per_output(score, keep: int):
  """Keeps the ``keep`` best inputs of every output unit (column); ties to the lower index."""
  score = jnp.where(jnp.isnan(score), -jnp.inf, score)
  order = jnp.argsort(-score, axis=0, stable=True)
  ranks = jnp.argsort(order, axis=0, stable=True)
  return ranks < keep
