"""Straight-through fake quantisation for quantisation-aware fine-tuning."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune.quantize._quantize import (
    _selection, check_options, check_scale_dtype, dequantize_leaf, quantize_leaf, tile_of)


def _straight_through(x, deq):
  """``deq`` forward (exactly), identity gradient backward."""
  sg = jax.lax.stop_gradient
  return sg(deq) + (x - sg(x))


def fake_quantize(params, bits: int = 8, *, axis: int | None = -1,
                  group_size: int | None = None, group_axis: int = -2,
                  symmetric: bool = True, masks=None, where=None, scale_dtype=jnp.float32):
  """``dequantize(quantize(params, ...))`` forward, identity gradient backward (STE).

  Use it inside the loss, ``loss(fake_quantize(params, 8, masks=masks), batch)``, to fine-tune
  a pruned model for the rounding it will get at export (quantisation-aware training with a
  straight-through estimator). The forward value of every selected leaf is exactly what
  :func:`dequantize` of :func:`quantize` with the same options returns; the gradient flows
  to the float params as if there were no rounding. Where ``masks`` is False the output is
  exactly 0 and the gradient is 0, so with ``jaxprune.keep_sparse(masks)`` or
  ``jaxprune.prune`` last in the optimizer chain pruned weights stay exactly 0 and the masks
  do not change. Options are those of :func:`quantize` (``scale_dtype=jnp.bfloat16`` for
  the rounding that ``jaxprune.export.save(..., bits=...)`` applies); jit-able.

  >>> import jax, jax.numpy as jnp
  >>> w = {"w": jnp.array([[0.25, -1.0], [0.125, 0.5]])}
  >>> m = {"w": jnp.array([[True, True], [False, True]])}
  >>> fake_quantize(w, 2, masks=m)["w"].tolist()  # 2 bits: q in {-1, 0, 1}; 0.5 ties to 0
  [[0.25, -1.0], [0.0, 0.0]]
  >>> jax.grad(lambda p: fake_quantize(p, 2, masks=m)["w"].sum())(w)["w"].tolist()
  [[1.0, 1.0], [0.0, 1.0]]
  """
  check_options(bits, axis, group_size, group_axis, symmetric)
  scale_dtype = check_scale_dtype(scale_dtype, "fake_quantize")
  rows, treedef = _selection(params, where, masks, "fake_quantize")
  out = []
  for p, x, m, chosen in rows:
    if chosen:
      tile = tile_of(p, x.shape, axis, group_size, group_axis)
      deq = dequantize_leaf(quantize_leaf(jax.lax.stop_gradient(x), bits, tile, symmetric, m,
                                          scale_dtype))
      x = _straight_through(x, deq)
    if m is not None:
      x = jnp.where(m, x, jnp.zeros((), x.dtype))
    out.append(x)
  return treedef.unflatten(out)
