"""Sparse layouts of one masked leaf: BCOO for sparse inference, N:M (2:4) compressed layout."""

from __future__ import annotations

import dataclasses
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from jaxprune.core import describe, is_array
from jaxprune.export._compress import _host, as_bits, from_bits


def _check_pair(fn: str, param, mask):
  if not is_array(param) or not is_array(mask):
    raise TypeError(f"{fn}: param and mask must be arrays; got {describe(param)} and "
                    f"{describe(mask)}.")
  if tuple(param.shape) != tuple(mask.shape):
    raise ValueError(f"{fn}: mask has shape {tuple(mask.shape)} but param has shape "
                     f"{tuple(param.shape)}; they must match.")
  m = _host("", mask, "the mask")
  if m.dtype != np.bool_:
    if not np.issubdtype(m.dtype, np.integer):
      raise TypeError(f"{fn}: mask must be bool (True = kept); got dtype {m.dtype}.")
    m = m != 0
  return _host("", param, "the param"), m


def to_bcoo(param, mask) -> sparse.BCOO:
  """A ``jax.experimental.sparse.BCOO`` holding the kept entries of ``param`` (host-side).

  ``to_bcoo(w, mask) @ x`` equals ``(w * mask) @ x`` and stores ``k`` values plus ``k`` index
  tuples (int32) for ``k`` kept entries; indices are sorted row-major and unique.

  >>> import numpy as np
  >>> w = np.array([[1., 2.], [3., 4.]], np.float32)
  >>> m = to_bcoo(w, np.array([[True, False], [False, True]]))
  >>> m.nse, (m @ np.ones(2, np.float32)).tolist()
  (2, [1.0, 4.0])
  """
  v, m = _check_pair("to_bcoo", param, mask)
  indices = np.argwhere(m).astype(np.int32).reshape(-1, v.ndim)
  return sparse.BCOO((jnp.asarray(v[m]), jnp.asarray(indices)), shape=v.shape,
                     indices_sorted=True, unique_indices=True)


@dataclasses.dataclass(frozen=True, eq=False)
class NofMLeaf:
  """One leaf in N:M compressed layout (a pytree node; all but the arrays are static).

  Attributes:
    values: the ``n`` slots of every group of ``m`` along ``axis``: the param's shape with
      that axis shrunk from ``K`` to ``K * n / m``; slots in increasing position order.
    indices: ``uint8[ceil(count * bits / 8)]``, each slot's position in its group
      (``0 <= i < m``) packed ``bits = 2`` (m <= 4), 4 (m <= 16) or 8 bits per index, the
      first index in the lowest bits of byte 0, in row-major order of ``values``.
    shape, n, m, axis: the param's shape and the layout.

  >>> import jax.numpy as jnp
  >>> from jaxprune import export, masks
  >>> w = jnp.arange(1., 9.).reshape(2, 4)
  >>> leaf = export.compress_n_of_m(w, w % 2 == 0)  # 2 of every 4 kept
  >>> type(leaf).__name__, leaf.values.shape, (leaf.n, leaf.m)
  ('NofMLeaf', (2, 2), (2, 4))
  """

  values: jax.Array | np.ndarray
  indices: jax.Array | np.ndarray
  shape: tuple[int, ...]
  n: int
  m: int
  axis: int


jax.tree_util.register_dataclass(NofMLeaf, data_fields=["values", "indices"],
                                 meta_fields=["shape", "n", "m", "axis"])


def _index_bits(m: int) -> int:
  for b in (1, 2, 4, 8):
    if m <= 1 << b:
      return b
  raise ValueError(f"N:M layout supports m <= 256; got m={m}.")


def _check_nm(fn, shape, n, m, axis) -> int:
  for name, v in (("n", n), ("m", m), ("axis", axis)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise TypeError(f"{fn}: {name} must be a Python int; got {v!r}.")
  if not 1 <= n <= m:
    raise ValueError(f"{fn}: needs 1 <= n <= m (keep n of every m); got n={n}, m={m}. For "
                     "2:4 sparsity use n=2, m=4.")
  _index_bits(m)
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f"{fn}: axis {axis} is out of range for shape {tuple(shape)}.")
  ax = operator.index(axis) % len(shape)
  if shape[ax] % m:
    raise ValueError(f"{fn}: axis {axis} has size {shape[ax]}, not divisible by m={m} (shape "
                     f"{tuple(shape)}). Use the axis the N:M mask was computed along.")
  return ax


def compress_n_of_m(param, mask, n: int = 2, m: int = 4, axis: int = -1) -> NofMLeaf:
  """Stores an N:M-sparse leaf as ``n`` values and ``n`` small indices per group (host-side).

  For 2:4 this is the layout of sparse tensor cores: half the values plus a 2-bit position per
  kept value (for f32: 2.125 bytes per entry instead of 4). Every group of ``m`` entries along
  ``axis`` must keep at most ``n``; a group that keeps fewer (pruned by an earlier mask) gets
  padding slots at its first pruned positions holding 0, so the params round-trip exactly and
  the masks do when every group keeps exactly ``n`` (as ``jaxprune.masks.n_of_m`` gives).

  Args:
    param: an array.
    mask: bool array of the same shape (True = kept), at most ``n`` kept per group.
    n, m: kept entries per group and group size.
    axis: the axis along which groups run (the one given to ``masks.n_of_m``).

  >>> import numpy as np
  >>> leaf = compress_n_of_m(np.array([[5., 6., 7., 8.]]), np.array([[0, 1, 0, 1]], bool))
  >>> leaf.values.tolist(), leaf.indices.tolist()  # positions 1, 3: 0b1101 = 13
  ([[6.0, 8.0]], [13])
  """
  v, g = _check_pair("compress_n_of_m", param, mask)
  ax = _check_nm("compress_n_of_m", v.shape, n, m, axis)
  moved = np.moveaxis(v, ax, -1)
  groups = lambda a: a.reshape(moved.shape[:-1] + (-1, m))
  gv, gm = groups(moved), groups(np.moveaxis(g, ax, -1))
  counts = gm.sum(-1)
  if (counts > n).any():
    where = tuple(int(i) for i in np.argwhere(counts > n)[0])
    raise ValueError(
        f"compress_n_of_m: a group of {m} along axis {axis} keeps {int(counts[where])} > n={n} "
        f"entries (group {where} of the moved layout). Compute the mask with "
        f"jaxprune.masks.n_of_m(scores, {n}, {m}, axis={axis}).")
  position = np.arange(m)
  rank = np.where(gm, position, m + position)  # kept first, then pruned, each by position
  slots = np.sort(np.argsort(rank, axis=-1, kind="stable")[..., :n], axis=-1)
  kept_values = np.where(gm, gv, np.zeros((), gv.dtype))
  values = np.take_along_axis(kept_values, slots, axis=-1)
  values = np.moveaxis(values.reshape(moved.shape[:-1] + (-1,)), -1, ax)
  index = np.moveaxis(slots.reshape(moved.shape[:-1] + (-1,)), -1, ax).reshape(-1)
  bits = _index_bits(m)
  per = 8 // bits
  index = np.concatenate([index, np.zeros((-index.size) % per, index.dtype)]).reshape(-1, per)
  packed = np.zeros(index.shape[0], np.uint8)
  for j in range(per):
    packed |= (index[:, j].astype(np.uint8) << (bits * j)).astype(np.uint8)
  return NofMLeaf(values=values, indices=packed, shape=tuple(v.shape), n=n, m=m, axis=ax)


def decompress_n_of_m(leaf: NofMLeaf):
  """The inverse of :func:`compress_n_of_m`: ``(param, mask)``; jit-able.

  >>> import numpy as np
  >>> w = np.array([[5., 6., 7., 8.]], np.float32)
  >>> p, mask = decompress_n_of_m(compress_n_of_m(w, np.array([[1, 0, 0, 1]], bool)))
  >>> p.tolist(), mask.tolist()
  ([[5.0, 0.0, 0.0, 8.0]], [[True, False, False, True]])
  """
  if not isinstance(leaf, NofMLeaf):
    raise TypeError(f"decompress_n_of_m expects an NofMLeaf from compress_n_of_m; got "
                    f"{describe(leaf)}.")
  ax = _check_nm("decompress_n_of_m", leaf.shape, leaf.n, leaf.m, leaf.axis)
  values = jnp.asarray(leaf.values)
  expected = leaf.shape[:ax] + (leaf.shape[ax] * leaf.n // leaf.m,) + leaf.shape[ax + 1:]
  if tuple(values.shape) != expected:
    raise ValueError(f"decompress_n_of_m: values must have shape {expected} for shape "
                     f"{leaf.shape} at {leaf.n}:{leaf.m}; got {describe(leaf.values)}.")
  bits = _index_bits(leaf.m)
  per = 8 // bits
  packed = jnp.asarray(leaf.indices)
  if packed.shape != (-(-values.size // per),) or packed.dtype != jnp.uint8:
    raise ValueError(f"decompress_n_of_m: indices must be uint8[{-(-values.size // per)}]; got "
                     f"{describe(leaf.indices)}.")
  return _unpack_n_of_m(values, packed, n=leaf.n, m=leaf.m, axis=ax)


@jax.jit(static_argnames=("n", "m", "axis"))
def _unpack_n_of_m(values, packed, n, m, axis):
  bits = _index_bits(m)
  per = 8 // bits
  low = jnp.uint8((1 << bits) - 1)
  index = jnp.stack([(packed >> jnp.uint8(bits * j)) & low for j in range(per)], axis=-1)
  index = index.reshape(-1)[:values.size].reshape(values.shape)
  dtype = values.dtype
  moved_values = jnp.moveaxis(as_bits(values), axis, -1)  # bit patterns: NaN payloads exact
  lead = moved_values.shape[:-1]
  slot_values = moved_values.reshape(lead + (-1, n))
  slot_index = jnp.moveaxis(index, axis, -1).reshape(lead + (-1, n))
  dense = jnp.zeros(lead + (slot_values.shape[-2], m), moved_values.dtype)
  mask = jnp.zeros(dense.shape, bool)
  for j in range(n):  # select, never add: keeps every bit (-0.0 and NaN included)
    hit = slot_index[..., j, None] == jnp.arange(m, dtype=jnp.uint8)
    dense = jnp.where(hit, slot_values[..., j, None], dense)
    mask = mask | hit
  unmove = lambda a: jnp.moveaxis(a.reshape(lead + (-1,)), -1, axis)
  return from_bits(unmove(dense), dtype), unmove(mask)
