"""The numerical core of SparseGPT: OBS with lazy block updates, and the exact refit of a mask.

Kernels are ``(in, out)`` (flax layout): the paper's columns (inputs) are rows here, so every
sequential step reads and writes contiguous rows. With ``U`` the upper Cholesky factor of
``(H + λI)⁻¹``, input ``i`` is fixed (pruned or quantised) with error ``e_i = (w_i − q_i) /
U_ii`` and every later input ``j`` moves by ``−U_ij e_i``. Written as a recurrence, the value
of input ``i`` when its turn comes is ``w_i − Σ_{j<i} U_ji e_j``, so instead of updating all
later inputs after every step (rank-1 updates), the solver keeps the errors and applies them
lazily at two levels: each input of a 16-input chunk is corrected from the chunk's own errors
(a short matrix-vector product), each chunk from the earlier chunks of its 128-input block (one
matrix product), and each block from the earlier blocks (one matrix product). The arithmetic
is the paper's, reassociated; the blocks run in a ``fori_loop`` (one compiled body per layer
shape), padded with decoupled inputs when ``block`` does not divide the input width.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxprune.oneshot import _select

_CHUNK = 16  # inputs corrected one by one; larger steps are matrix products


def damped(h, damping: float):
  """``H + λI`` with ``λ = damping · mean(diag H)`` over live inputs; dead inputs decoupled.

  An input that never fired (``H_ii = 0``) has no effect on the outputs: its row and column
  are cleared and its diagonal set to 1, so it is ranked by its magnitude alone.
  """
  diag = jnp.diag(h)
  dead = diag == 0
  h = jnp.where(dead[:, None] | dead[None, :], 0.0, h) + jnp.diag(jnp.where(dead, 1.0, 0.0))
  live = jnp.sum(~dead)
  mean = jnp.where(live > 0, jnp.sum(jnp.where(dead, 0.0, diag)) / jnp.maximum(live, 1), 1.0)
  return h + damping * mean * jnp.eye(h.shape[0], dtype=h.dtype)


def inverse_cholesky(h) -> jax.Array:
  """Upper ``U`` with ``UᵀU = H⁻¹`` (NaN where ``H`` is not positive definite)."""
  eye = jnp.eye(h.shape[0], dtype=h.dtype)
  hinv = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), eye)
  return jnp.linalg.cholesky((hinv + hinv.T) / 2).T


def grid(w, bits: int | None):
  """Per-output-unit symmetric step ``max|w| / (2^(bits−1) − 1)`` of an ``(in, out)`` kernel."""
  if bits is None:
    return None
  top = jnp.max(jnp.abs(w), axis=0)
  return jnp.where(top > 0, top / (2 ** (bits - 1) - 1), 1.0)


def _quantise(v, step, bits):
  if bits is None:
    return v
  qmax = 2 ** (bits - 1) - 1
  return jnp.clip(jnp.round(v / step), -qmax, qmax) * step


@functools.partial(jax.jit, static_argnames=("n", "m", "block", "bits"))
def solve(w, h, keeps, fixed, *, n, m, block, bits):
  """SparseGPT on a float32 ``(in, out)`` kernel given the damped Hessian ``h``.

  The mask is ``fixed`` (a bool ``(in, out)`` array), or chosen on the way: ``keeps[b]``
  entries of block ``b`` (unstructured; over all the block's entries by ``w² / U_ii²``), or
  ``n`` of every ``m`` inputs per output unit (N:M, when the group's turn comes).
  Returns ``(new_w, mask, ok)``.
  """
  d_in, d_out = w.shape
  pad = -d_in % block
  u = inverse_cholesky(jnp.pad(h, ((0, pad), (0, pad))) + jnp.diag(
      jnp.concatenate([jnp.zeros(d_in), jnp.ones(pad)])))
  ok = jnp.all(jnp.isfinite(u))
  step = grid(w, bits)
  live = jnp.arange(d_in + pad) < d_in
  chunk = _chunk(block, m)
  fixed_all = None if fixed is None else jnp.pad(fixed, ((0, pad), (0, 0)))

  def one_block(b, carry):
    w_all, mask_all = carry
    i1 = b * block
    u_rows = lax.dynamic_slice_in_dim(u, i1, block, axis=0)  # (block, d)
    u1 = lax.dynamic_slice_in_dim(u_rows, i1, block, axis=1)
    w1 = lax.dynamic_slice_in_dim(w_all, i1, block, axis=0)
    if fixed_all is not None:
      mask1 = lax.dynamic_slice_in_dim(fixed_all, i1, block, axis=0)
    elif n is None:
      score = jnp.square(w1) / jnp.square(jnp.diag(u1))[:, None]
      score = jnp.where(lax.dynamic_slice_in_dim(live, i1, block)[:, None], score, -jnp.inf)
      mask1 = _select.top_flat(score.T, keeps[b]).T  # paper orientation: ties by output unit
    else:
      mask1 = jnp.zeros(w1.shape, bool)
    q1, err1, mask1 = _block(w1, u1, mask1, step, chunk=chunk, n=n, m=m, bits=bits)
    w_all = w_all - u_rows.T @ err1  # later inputs; U is upper triangular
    w_all = lax.dynamic_update_slice_in_dim(w_all, q1, i1, axis=0)
    return w_all, lax.dynamic_update_slice_in_dim(mask_all, mask1, i1, axis=0)

  init = (jnp.pad(w, ((0, pad), (0, 0))), jnp.zeros((d_in + pad, d_out), bool))
  w_new, mask = lax.fori_loop(0, (d_in + pad) // block, one_block, init)
  mask = mask[:d_in]
  return jnp.where(mask, w_new[:d_in], 0.0), mask, ok


def _chunk(block: int, m: int | None) -> int:
  """Inputs per sequential chunk: a divisor of ``block``, a multiple of ``m``, about 16."""
  unit = m or 1
  best = block
  for c in range(unit, block + 1, unit):
    if block % c == 0 and abs(c - _CHUNK) < abs(best - _CHUNK):
      best = c
  return best


def _block(w1, u1, mask1, step, *, chunk, n, m, bits):
  """Fixes the inputs of one block in order: ``(values, errors, mask)``, each ``(block, out)``."""
  size = w1.shape[0]

  def one_chunk(c, carry):
    q1, err1, mask1 = carry
    c1 = c * chunk
    u_cols = lax.dynamic_slice_in_dim(u1, c1, chunk, axis=1)  # (block, chunk)
    wc = lax.dynamic_slice_in_dim(w1, c1, chunk, axis=0) - u_cols.T @ err1
    uc = lax.dynamic_slice_in_dim(u_cols, c1, chunk, axis=0)
    mc = lax.dynamic_slice_in_dim(mask1, c1, chunk, axis=0)
    qc, ec, mc = _chunk_steps(wc, uc, mc, step, n=n, m=m, bits=bits)
    return (lax.dynamic_update_slice_in_dim(q1, qc, c1, axis=0),
            lax.dynamic_update_slice_in_dim(err1, ec, c1, axis=0),
            lax.dynamic_update_slice_in_dim(mask1, mc, c1, axis=0))

  zeros = jnp.zeros_like(w1)
  return lax.fori_loop(0, size // chunk, one_chunk, (zeros, zeros, mask1))


def _chunk_steps(wc, uc, mc, step, *, n, m, bits):
  """The sequential steps inside one chunk (N:M masks chosen per group of ``m`` on the way)."""
  group = m or 1

  def one_group(g, carry):
    qc, ec, mc = carry
    g1 = g * group
    if n is not None:  # the group's current values decide its mask
      u_g = lax.dynamic_slice_in_dim(uc, g1, group, axis=1)
      current = lax.dynamic_slice_in_dim(wc, g1, group, axis=0) - u_g.T @ ec
      diag = lax.dynamic_slice_in_dim(jnp.diag(uc), g1, group)
      keep = _select.n_best_of_m(jnp.square(current) / jnp.square(diag)[:, None], n)
      mc = lax.dynamic_update_slice_in_dim(mc, keep, g1, axis=0)
    for j in range(group):
      i = g1 + j
      v = lax.dynamic_index_in_dim(wc, i, keepdims=False) - lax.dynamic_index_in_dim(
          uc, i, axis=1, keepdims=False) @ ec
      q = jnp.where(lax.dynamic_index_in_dim(mc, i, keepdims=False), _quantise(v, step, bits), 0.)
      e = (v - q) / uc[i, i]
      qc = lax.dynamic_update_index_in_dim(qc, q, i, axis=0)
      ec = lax.dynamic_update_index_in_dim(ec, e, i, axis=0)
    return qc, ec, mc

  zeros = jnp.zeros_like(wc)
  return lax.fori_loop(0, wc.shape[0] // group, one_group, (zeros, zeros, mc))


@functools.partial(jax.jit, static_argnames=("kept_max",))
def refit(w, h, mask, *, kept_max: int):
  """Exact least squares for a fixed mask: per output unit ``r`` with kept inputs ``K``,
  ``ŵ_K = argmin (ŵ − w)ᵀ H (ŵ − w)`` with ``ŵ = 0`` off ``K``, i.e. ``H_KK ŵ_K = (H w)_K``.

  Output units are solved in chunks, each kept set padded to ``kept_max`` inputs with
  decoupled dummies (identity rows, zero right-hand side). Returns ``(new_w, ok)``.
  """
  d_in, d_out = w.shape
  k = max(kept_max, 1)
  hw = h @ w
  order, valid = _kept_first(mask, k)
  per_chunk = max(1, min(d_out, (1 << 24) // (k * k)))
  padded = -d_out % per_chunk

  def solve_chunk(args):
    idx, ok_, rhs_col = args  # (c, k), (c, k), (c, d_in)
    a = h[idx[:, :, None], idx[:, None, :]]
    both = ok_[:, :, None] & ok_[:, None, :]
    a = jnp.where(both, a, jnp.eye(k, dtype=h.dtype))
    rhs = jnp.where(ok_, jnp.take_along_axis(rhs_col, idx, axis=1), 0.0)
    low = jnp.linalg.cholesky(a)
    return jax.scipy.linalg.cho_solve((low, True), rhs[..., None])[..., 0]

  chunked = lambda x: jnp.pad(x, ((0, padded),) + ((0, 0),) * (x.ndim - 1)).reshape(
      (-1, per_chunk) + x.shape[1:])
  values = lax.map(solve_chunk, (chunked(order), chunked(valid), chunked(hw.T)))
  values = values.reshape(-1, k)[:d_out]
  out = jnp.zeros((d_out, d_in), w.dtype).at[jnp.arange(d_out)[:, None], order].set(
      jnp.where(valid, values, 0.0))
  ok = jnp.all(jnp.isfinite(values))
  return jnp.where(mask, out.T, 0.0), ok


def _kept_first(mask, k: int):
  """Per output unit: its input indices, kept ones first (in order), cut to ``k``; and which
  of those ``k`` are kept. A scatter of ranks, not a sort (argsort is slow on XLA:CPU)."""
  d_in, d_out = mask.shape
  kept = jnp.cumsum(mask, axis=0) - 1
  dropped = jnp.sum(mask, axis=0) + jnp.cumsum(~mask, axis=0) - 1
  rank = jnp.where(mask, kept, dropped).T  # (out, in): position of input i in the order
  order = jnp.zeros((d_out, d_in), jnp.int32).at[jnp.arange(d_out)[:, None], rank].set(
      jnp.arange(d_in, dtype=jnp.int32)[None, :])
  valid = jnp.arange(k)[None, :] < jnp.sum(mask, axis=0)[:, None]
  return order[:, :k], valid


def kept_bound(mask) -> int:
  """The largest kept count of an output unit, as a static int (``in`` for traced masks)."""
  try:
    return int(jnp.max(jnp.sum(jnp.asarray(mask), axis=0)))
  except jax.errors.ConcretizationTypeError:
    return int(mask.shape[0])


def block_keeps(d_in: int, d_out: int, block: int, keep_total: int) -> list[int]:
  """Entries each block keeps so that the kernel keeps exactly ``keep_total``.

  The pruned count is spread over blocks in proportion to their size (cumulative rounding,
  so the total is exact).
  """
  size = d_in * d_out
  pruned_total = size - keep_total
  keeps, before = [], 0
  for i1 in range(0, d_in, block):
    i2 = min(i1 + block, d_in)
    upto = pruned_total if i2 >= d_in else int(math.floor(pruned_total * i2 / d_in + 0.5))
    keeps.append(d_out * (i2 - i1) - (upto - before))
    before = upto
  return keeps
