"""Mask-aware integer quantisation of params: per-tensor, per-channel and per-group scales."""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import DTypeLike

from jaxprune import filters
from jaxprune.core import as_mask_leaf, at_path, describe, flatten_with_paths, is_array, leaves_like


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedLeaf:
  """One quantised leaf: ``param ≈ (values - zero) * scale``, each scale covering one tile.

  A pytree node: ``values``, ``scale`` and ``zero`` are its children (so it passes through
  ``jax.jit``, ``jax.device_put``, ``jax.tree.map``), ``bits`` and ``dtype`` are static.
  The layout is the one of qwix's ``QArray`` (see :mod:`jaxprune.quantize`): ``scale`` has the
  rank of ``values`` and each of its entries covers a tile of ``values.shape[i] //
  scale.shape[i]`` entries along axis ``i``.

  Attributes:
    values: ``int8`` array of the param's shape, in ``[-2**(bits-1), 2**(bits-1) - 1]``
      (4-bit values are kept one per byte in memory; ``jaxprune.export`` packs two per byte).
    scale: ``float32`` array of the tile grid's shape (e.g. ``(1, out)`` per channel), or
      ``bfloat16`` (``quantize(..., scale_dtype=jnp.bfloat16)``).
    zero: ``int8`` zero points shaped like ``scale`` (asymmetric), or ``None`` (symmetric).
    bits: 2 to 8.
    dtype: the param's dtype, which :func:`dequantize` returns.

  >>> import jax.numpy as jnp
  >>> from jaxprune import quantize
  >>> q = quantize.quantize({"w": jnp.array([[1., -2., 0.5, 4.]])}, bits=8)["w"]
  >>> type(q).__name__, q.bits, q.values.dtype, q.values.shape
  ('QuantizedLeaf', 8, dtype('int8'), (1, 4))
  """

  values: jax.Array | np.ndarray
  scale: jax.Array | np.ndarray
  zero: jax.Array | np.ndarray | None
  bits: int
  dtype: Any

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.values.shape)

  @property
  def tile(self) -> tuple[int, ...]:
    """Entries covered by one scale along each axis."""
    return tuple(v // max(s, 1) for v, s in zip(self.values.shape, self.scale.shape))


jax.tree_util.register_dataclass(QuantizedLeaf, data_fields=["values", "scale", "zero"],
                                 meta_fields=["bits", "dtype"])


def is_quantized(x) -> bool:
  """True for a :class:`QuantizedLeaf` (use as ``is_leaf=`` when mapping quantised trees).

  >>> import jax.numpy as jnp
  >>> from jaxprune import quantize
  >>> q = quantize.quantize({"w": jnp.ones((2, 4))}, bits=8)
  >>> is_quantized(q["w"]), is_quantized(jnp.ones(2))
  (True, False)
  """
  return isinstance(x, QuantizedLeaf)


def _check_int(name, v, *, allow_none=False):
  if v is None and allow_none:
    return None
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
    raise TypeError(f"quantize: {name} must be a Python int{' or None' if allow_none else ''}; "
                    f"got {v!r}.")
  return int(v)


SCALE_DTYPES = (np.dtype(np.float32), np.dtype(jnp.bfloat16))


def check_scale_dtype(scale_dtype, fn: str = "quantize"):
  """``scale_dtype`` as a numpy dtype, float32 or bfloat16."""
  error = TypeError(f"{fn}: scale_dtype must be jnp.float32 or jnp.bfloat16; got "
                    f"{scale_dtype!r}.")
  try:
    dtype = np.dtype(jnp.dtype(scale_dtype))
  except (TypeError, ValueError):
    raise error from None
  if dtype not in SCALE_DTYPES:
    raise error
  return dtype


def check_options(bits, axis, group_size, group_axis, symmetric) -> None:
  """Static checks of the quantisation options (before any leaf is seen)."""
  bits = int(_check_int("bits", bits))  # pyright: ignore[reportArgumentType]
  if not 2 <= bits <= 8:
    raise ValueError(f"quantize: bits must be between 2 and 8 (8 and 4 are the usual); got "
                     f"{bits}.")
  _check_int("axis", axis, allow_none=True)
  gs = _check_int("group_size", group_size, allow_none=True)
  if gs is not None and gs < 1:
    raise ValueError(f"quantize: group_size must be a positive int or None; got {gs}.")
  _check_int("group_axis", group_axis)
  if not isinstance(symmetric, bool):
    raise TypeError(f"quantize: symmetric must be True or False; got {symmetric!r}.")


def tile_of(path: str, shape, axis, group_size, group_axis) -> tuple[int, ...]:
  """The tile one scale covers in a leaf of ``shape`` (see :func:`quantize` for the rules)."""
  shape = tuple(int(s) for s in shape)
  nd = len(shape)
  if nd == 0:
    return ()
  if nd == 1:  # vectors (only when selected explicitly): one scale, or one per group
    if group_size is None or shape[0] <= group_size:
      return shape
    if shape[0] % group_size:
      raise ValueError(f"quantize: group_size={group_size} does not divide the size {shape[0]} "
                       f"of the 1-D leaf at {at_path(path)}. Use a divisor, group_size=None, or "
                       "leave the leaf out with where=.")
    return (group_size,)
  tile = list(shape)
  if axis is not None:
    if not -nd <= axis < nd:
      raise ValueError(f"quantize: axis={axis} is out of range for the leaf at {at_path(path)} "
                       f"of shape {shape}. Use the output-channel axis (-1 for flax kernels) or "
                       "None (one scale per tensor).")
    tile[operator.index(axis) % nd] = 1
  if group_size is not None:
    if not -nd <= group_axis < nd:
      raise ValueError(f"quantize: group_axis={group_axis} is out of range for the leaf at "
                       f"{at_path(path)} of shape {shape}.")
    g = group_axis % nd
    if axis is not None and g == axis % nd:
      raise ValueError(f"quantize: group_axis and axis are the same axis ({g}) for the leaf at "
                       f"{at_path(path)} of shape {shape}; groups run along the input axis "
                       "(group_axis=-2 for flax kernels), channels along the output axis.")
    size = shape[g]
    if size > group_size:
      if size % group_size:
        raise ValueError(
            f"quantize: group_size={group_size} does not divide axis {g} (size {size}) of the "
            f"leaf at {at_path(path)} of shape {shape}. Use a divisor of {size}, "
            "group_size=None (per channel), or leave the leaf out with where=.")
      tile[g] = group_size
  return tuple(tile)


def _tiled(x, tile):
  """``x`` reshaped to ``(grid_0, tile_0, grid_1, tile_1, ...)``."""
  inter = []
  for s, t in zip(x.shape, tile):
    inter += [s // t if t else 0, t]
  return x.reshape(inter)


def _tile_axes(nd):
  return tuple(range(1, 2 * nd, 2))


def quantize_leaf(x, bits: int, tile, symmetric: bool, mask=None,
                  scale_dtype: DTypeLike = np.float32) -> QuantizedLeaf:
  """Quantises one array with one scale per ``tile`` (jit-able; see :func:`quantize`)."""
  return _quantize_leaf(x, mask, bits=bits, tile=tuple(tile), symmetric=symmetric,
                        scale_dtype=np.dtype(scale_dtype))


def round_up_to(scale, dtype):
  """The smallest value of ``dtype`` that is >= each float32 ``scale`` (NaN stays NaN)."""
  if np.dtype(dtype) == np.float32:
    return scale
  narrow = scale.astype(dtype)
  up = jnp.nextafter(narrow, jnp.asarray(jnp.inf, dtype))
  return jnp.where(narrow.astype(jnp.float32) < scale, up, narrow)


@jax.jit(static_argnames=("bits", "tile", "symmetric", "scale_dtype"))
def _quantize_leaf(x, mask, *, bits, tile, symmetric, scale_dtype):
  dtype = np.dtype(x.dtype)
  xf = jnp.asarray(x).astype(jnp.float32)
  if mask is not None:
    xf = jnp.where(mask, xf, jnp.zeros((), jnp.float32))  # scales from kept weights only
  nd = xf.ndim
  xt = _tiled(xf, tile) if nd else xf
  red = _tile_axes(nd)
  qmax = 2 ** (bits - 1) - 1
  qmin = -(2 ** (bits - 1))
  one = jnp.ones((), jnp.float32)
  # initial=0: empty leaves work, and the range always holds 0 so that 0 is exact
  if symmetric:
    amax = jnp.max(jnp.abs(xt), axis=red, keepdims=True, initial=0.0)
    stored = round_up_to(jnp.where(amax > 0, amax * np.float32(1 / qmax), one), scale_dtype)
    scale = stored.astype(jnp.float32)  # (amax * c: as XLA does amax / qmax)
    q = jnp.clip(jnp.round(xt / scale), -qmax, qmax)
    zero = None
  else:
    lo = jnp.min(xt, axis=red, keepdims=True, initial=0.0)
    hi = jnp.max(xt, axis=red, keepdims=True, initial=0.0)
    stored = round_up_to(jnp.where(hi > lo, (hi - lo) * np.float32(1 / (2 ** bits - 1)), one),
                         scale_dtype)
    scale = stored.astype(jnp.float32)
    zero = jnp.clip(qmin - jnp.round(lo / scale), qmin, qmax)
    q = jnp.clip(jnp.round(xt / scale) + zero, qmin, qmax)
  grid = tuple(s // t if t else 0 for s, t in zip(xf.shape, tile))
  values = q.reshape(xf.shape).astype(jnp.int8)
  return QuantizedLeaf(values=values, scale=stored.reshape(grid),
                       zero=None if zero is None else zero.reshape(grid).astype(jnp.int8),
                       bits=bits, dtype=dtype)


@jax.jit
def dequantize_leaf(q: QuantizedLeaf):
  """``(values - zero) * scale`` in float32, cast to the leaf's dtype (jit-able)."""
  nd = q.values.ndim
  v = q.values.astype(jnp.int32)
  tile = q.tile
  grid_shape = []
  for s in q.scale.shape:
    grid_shape += [s, 1]
  vt = _tiled(v, tile) if nd else v
  if q.zero is not None:
    vt = vt - (q.zero.astype(jnp.int32).reshape(grid_shape) if nd else q.zero.astype(jnp.int32))
  scale = q.scale.astype(jnp.float32)
  out = vt.astype(jnp.float32) * (scale.reshape(grid_shape) if nd else scale)
  return out.reshape(q.values.shape).astype(q.dtype)


def _selection(params, where, masks, fn: str):
  """Per leaf: ``(path, leaf, mask, quantise?)``; checks the masks and the selection."""
  paths, leaves, treedef = flatten_with_paths(params, is_leaf=is_quantized)
  mask_leaves = [None] * len(leaves) if masks is None else leaves_like(params, masks,
                                                                       name="masks")
  f = filters.resolve(where)
  rows = []
  for p, x, m in zip(paths, leaves, mask_leaves):
    if is_quantized(x):
      if m is not None:
        raise TypeError(f"{fn}: the leaf at {at_path(p)} is already quantised; give it a None "
                        "mask (its pruned entries are already 0).")
      rows.append((p, x, None, False))
      continue
    if m is not None:
      m = as_mask_leaf(p, m, x)
    chosen = is_array(x) and f(p, x)
    if chosen and not jnp.issubdtype(x.dtype, jnp.floating):
      if where is not None:
        raise TypeError(f"{fn}: where= selects the leaf at {at_path(p)} but it is "
                        f"{describe(x)}; only floating leaves can be quantised. Narrow where=.")
      chosen = False  # the default filter quietly leaves integer and key leaves alone
    rows.append((p, x, m, chosen))
  return rows, treedef


def quantize(params, bits: int = 8, *, axis: int | None = -1, group_size: int | None = None,
             group_axis: int = -2, symmetric: bool = True, masks=None, where=None,
             scale_dtype=jnp.float32):
  """Quantises the selected leaves of ``params`` to ``bits``-bit integers plus scales.

  Each selected leaf becomes a :class:`QuantizedLeaf` with one scale per tile:

  * per channel (default, ``axis=-1``, the output axis of flax kernels): one scale per index
    along ``axis``, over all other axes (scale shape ``(1, out)`` for an ``(in, out)`` kernel);
  * per group (``group_size=g``): additionally split into groups of ``g`` consecutive entries
    along ``group_axis`` (default -2, the input axis of flax Dense and Conv kernels): scale
    shape ``(in // g, out)``, as LLM weight quantisers use. ``g`` must divide that axis unless
    the axis is not longer than ``g`` (then one group);
  * per tensor: ``axis=None`` (and no group_size).

  Symmetric (default): ``scale = max|w| * float32(1 / (2**(bits-1) - 1))``,
  ``q = round(w / scale)`` in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (int8: ±127).
  Asymmetric: the range ``[min(w, 0), max(w, 0)]`` maps to ``[-2**(bits-1), 2**(bits-1) - 1]``
  with an integer zero point, so 0 is exact there too. Scales come from the **kept** weights
  only (pruned entries, where ``masks`` is False, do not widen the range), and pruned entries
  get ``q = zero``, so
  :func:`dequantize` returns exactly 0 for them. Rounding is round-to-nearest, ties to even
  (``jnp.round``, as numpy and IEEE-754 default), computed in float32 for every param dtype;
  every kept weight is then within half a step (``scale / 2``) of its dequantised value.
  A tile of only zeros gets scale 1. With ``scale_dtype=jnp.bfloat16`` each scale is first
  rounded **up** to the nearest bfloat16 (so no kept weight clips and the half-step bound
  holds for the stored scale), the values are computed with that scale and the scales are
  bfloat16 arrays: half the bytes, as ``jaxprune.export.save(..., bits=...)`` stores them.

  Pure and jit-able (options are static); leaves not selected are returned unchanged (masked
  ones with their pruned entries set to 0); leaves that are already :class:`QuantizedLeaf` are
  kept as they are.

  Args:
    params: any pytree of arrays (float32, bfloat16, float16).
    bits: 2 to 8 (8 and 4 are the usual).
    axis: the channel axis with one scale per index, or ``None``.
    group_size: entries per group along ``group_axis``, or ``None``.
    group_axis: the axis along which groups run.
    symmetric: symmetric (no zero point) or asymmetric (int8 zero points) quantisation.
    masks: optional pytree like params: bool (True = kept) or ``None`` per leaf.
    where: which leaves to quantise (``jaxprune.filters``); default: floating leaves with
      ``ndim >= 2``. Leaves with ``ndim < 2`` selected explicitly get one scale (per group).
    scale_dtype: ``jnp.float32`` (default) or ``jnp.bfloat16``: the dtype of the scales,
      each exactly the scale the values were computed with.

  Returns:
    A pytree like ``params`` with :class:`QuantizedLeaf` at the quantised leaves.

  >>> import jax.numpy as jnp
  >>> w = jnp.array([[0.5, -2.0], [1.0, 0.25], [0.3, 1.0]])
  >>> q = quantize({"w": w}, 8, masks={"w": w != 0.3})["w"]
  >>> q.values.tolist(), (q.scale * 127).tolist()  # a scale per column, from kept weights
  ([[64, -127], [127, 16], [0, 64]], [[1.0, 2.0]])
  >>> dequantize(q)[2, 0].item()  # the pruned entry
  0.0
  >>> q16 = quantize({"w": w}, 8, masks={"w": w != 0.3}, scale_dtype=jnp.bfloat16)["w"]
  >>> q16.scale.dtype, bool((q16.scale.astype(jnp.float32) >= q.scale).all())  # rounded up
  (dtype(bfloat16), True)
  """
  check_options(bits, axis, group_size, group_axis, symmetric)
  scale_dtype = check_scale_dtype(scale_dtype)
  rows, treedef = _selection(params, where, masks, "quantize")
  out = []
  for p, x, m, chosen in rows:
    if chosen:
      out.append(quantize_leaf(x, bits, tile_of(p, x.shape, axis, group_size, group_axis),
                               symmetric, m, scale_dtype))
    elif m is not None:
      out.append(jnp.where(m, x, jnp.zeros((), x.dtype)))
    else:
      out.append(x)
  return treedef.unflatten(out)


def dequantize(tree):
  """Replaces every :class:`QuantizedLeaf` of ``tree`` by its float array (other leaves stay).

  ``(values - zero) * scale`` is computed in float32 (exact 0 where ``values == zero``) and
  cast to the leaf's original dtype. Jit-able.

  >>> import jax.numpy as jnp
  >>> q = quantize({"w": jnp.array([[127.0, -63.5], [0.0, 2.5]])}, 8, axis=None)
  >>> dequantize(q)["w"].tolist()  # scale 1; ties to even: -63.5 -> -64, 2.5 -> 2
  [[127.0, -64.0], [0.0, 2.0]]
  """
  return jax.tree.map(lambda x: dequantize_leaf(x) if is_quantized(x) else x, tree,
                      is_leaf=is_quantized)


def quantized_nbytes(q: QuantizedLeaf) -> int:
  """Bytes of a quantised leaf once packed (``bits`` per value) with its scales/zero points.

  >>> import jax.numpy as jnp
  >>> from jaxprune import quantize
  >>> q = quantize.quantize({"w": jnp.ones((4, 8))}, bits=4)["w"]
  >>> quantized_nbytes(q), jnp.ones((4, 8)).nbytes
  (48, 128)
  """
  n = math.prod(q.shape)
  per = 2 if q.bits <= 4 else 1
  extra = 0 if q.zero is None else q.zero.size
  return -(-n // per) + np.dtype(q.scale.dtype).itemsize * q.scale.size + extra
