"""Bit-packed masks plus kept values: a compact form of masked params and its exact inverse."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core import (
    at_path, check_mask_leaf, describe, flatten_with_paths, is_array, is_tracer, leaves_like,
    unwrap_variables)


@dataclasses.dataclass(frozen=True, eq=False)
class PackedLeaf:
  """One pruned leaf in compressed form (a pytree node; ``shape`` is static metadata).

  Attributes:
    bits: ``uint8[ceil(size / 8)]``, the mask flattened in row-major order and bit-packed with
      ``np.packbits`` (big bit order: entry 0 is the high bit of byte 0; padding bits are 0).
    values: ``dtype[kept]``, the kept entries in row-major order, in the param's dtype.
    shape: the param's shape.

  >>> import numpy as np
  >>> from jaxprune import export
  >>> leaf = export.compress({"w": np.array([1., 0., 2., 0.])},
  ...                        {"w": np.array([1, 0, 1, 0], bool)})["w"]
  >>> leaf.values.tolist(), leaf.shape, leaf.bits.tolist()
  ([1.0, 2.0], (4,), [160])
  """

  bits: jax.Array | np.ndarray
  values: jax.Array | np.ndarray
  shape: tuple[int, ...]

  @property
  def dtype(self):
    return self.values.dtype

  @property
  def size(self) -> int:
    return math.prod(self.shape)


jax.tree_util.register_dataclass(PackedLeaf, data_fields=["bits", "values"],
                                 meta_fields=["shape"])


def _is_packed(x) -> bool:
  return isinstance(x, PackedLeaf)


def _host(path: str, x, what: str) -> np.ndarray:
  if is_tracer(x):
    raise TypeError(
        f"compress: {what} at {at_path(path)} is a tracer ({describe(x)}). compress is host-side "
        "(its output size depends on the mask): call it outside jax.jit.")
  if isinstance(x, jax.ShapeDtypeStruct):
    raise TypeError(f"compress: {what} at {at_path(path)} is abstract ({describe(x)}); "
                    "compress needs concrete arrays.")
  return np.asarray(jax.device_get(x))


def _pack_leaf(path: str, x, mask) -> PackedLeaf:
  check_mask_leaf(path, mask, x, what="compress: masks")
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    raise TypeError(f"compress: params at {at_path(path)} is a PRNG key array; only numeric "
                    "leaves can be compressed (give it a None mask).")
  m = _host(path, mask, "the mask")
  if m.dtype != np.bool_:
    if not np.issubdtype(m.dtype, np.integer):
      raise TypeError(f"compress: mask at {at_path(path)} must be bool (True = kept); got "
                      f"dtype {m.dtype}.")
    m = m != 0
  v = _host(path, x, "the param")
  return PackedLeaf(bits=np.packbits(m.reshape(-1)), values=v[m], shape=tuple(v.shape))


def compress(params, masks):
  """Compresses masked params: each masked leaf becomes a :class:`PackedLeaf`.

  A pruned leaf of ``n`` entries with ``k`` kept takes ``ceil(n / 8)`` mask bytes plus ``k``
  values, so its size shrinks with sparsity; leaves whose mask is ``None`` are returned as they
  are. Host-side (the output size depends on the masks), not jit-able; entries where the mask is
  False are dropped whatever their value, i.e. ``decompress`` returns
  ``apply_masks(params, masks)``.

  Args:
    params: any pytree of arrays (flax nnx Variables are unwrapped to the arrays they hold).
    masks: a pytree like ``params``: a bool array (True = kept) or ``None`` per leaf (e.g.
      ``masks_of(nnx_optimizer.opt_state)``).

  Returns:
    A pytree like ``params`` (nnx Variables unwrapped) with :class:`PackedLeaf` (numpy
    arrays) at the masked leaves.

  >>> import numpy as np
  >>> c = compress({"w": np.array([[1., 0.], [3., 4.]]), "b": np.ones(2)},
  ...              {"w": np.array([[True, False], [False, True]]), "b": None})
  >>> c["w"].bits.tolist(), c["w"].values.tolist(), c["w"].shape
  ([144], [1.0, 4.0], (2, 2))
  """
  params, masks = unwrap_variables(params), unwrap_variables(masks)  # nnx Param / OptVariable
  paths, leaves, treedef = flatten_with_paths(params)
  mask_leaves = leaves_like(params, masks, name="masks")
  out = [x if m is None else _pack_leaf(p, x, m) for p, x, m in zip(paths, leaves, mask_leaves)]
  return treedef.unflatten(out)


def _unpack_leaf(path: str, leaf: PackedLeaf):
  n = leaf.size
  bits, values = leaf.bits, leaf.values
  if (not is_array(bits) or bits.ndim != 1 or bits.dtype != np.uint8
      or bits.shape[0] != (n + 7) // 8):
    raise ValueError(
        f"decompress: the packed mask at {at_path(path)} must be uint8[{(n + 7) // 8}] for shape "
        f"{leaf.shape}; got {describe(bits)}. The compressed tree is corrupted.")
  if not is_array(values) or values.ndim != 1:
    raise ValueError(f"decompress: values at {at_path(path)} must be 1-D; got "
                     f"{describe(values)}.")
  if jax.dtypes.canonicalize_dtype(values.dtype) != np.dtype(values.dtype):
    raise ValueError(
        f"decompress: values at {at_path(path)} are {np.dtype(values.dtype)}, which JAX would "
        f"turn into {jax.dtypes.canonicalize_dtype(values.dtype)}; enable 64-bit types "
        "(jax.config.update('jax_enable_x64', True)) to decompress them exactly.")
  if is_tracer(bits) or is_tracer(values):
    return _unpack(jnp.asarray(bits), jnp.asarray(values), leaf.shape)
  # Concrete input: a numpy scatter, faster than compiling a scan for every leaf shape.
  mask = np.unpackbits(np.asarray(bits), count=n).astype(bool)
  kept, k = int(mask.sum()), values.shape[0]
  if kept != k:
    raise ValueError(
        f"decompress: the mask at {at_path(path)} keeps {kept} entries but {k} values are "
        "stored. The compressed tree is corrupted.")
  dense = np.zeros((n,), np.dtype(values.dtype))
  dense[mask] = np.asarray(values)
  return jnp.asarray(dense.reshape(leaf.shape)), jnp.asarray(mask.reshape(leaf.shape))


@jax.jit(static_argnames="shape")
def _unpack(bits, values, shape):
  """Dense leaf and mask from packed bits and kept values (one compiled kernel per shape)."""
  n, k = math.prod(shape), values.shape[0]
  mask = jnp.unpackbits(bits, count=n).astype(bool)
  raw = as_bits(values)  # move bit patterns, not floats: NaN payloads stay exact
  if k == 0:
    dense = jnp.zeros((n,), raw.dtype)
  else:
    index = jnp.clip(jnp.cumsum(mask, dtype=jnp.int32) - 1, 0, k - 1)
    dense = jnp.where(mask, raw[index], jnp.zeros((), raw.dtype))
  return from_bits(dense, values.dtype).reshape(shape), mask.reshape(shape)


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def as_bits(x):
  """The bit patterns of a floating array as unsigned ints (other dtypes are returned as is).

  XLA may quiet signalling NaNs when it moves floats (e.g. bfloat16 on CPU); integers are
  moved exactly.
  """
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x
  return jax.lax.bitcast_convert_type(x, _UINT[np.dtype(x.dtype).itemsize])


def from_bits(x, dtype):
  """Inverse of :func:`as_bits`."""
  return x if x.dtype == dtype else jax.lax.bitcast_convert_type(x, dtype)


def decompress(compressed):
  """The exact inverse of :func:`compress`: returns ``(params, masks)``.

  Pruned entries are exactly 0 and kept ones bit-identical to the originals (NaN payloads
  included). Jit-able (the shapes are static metadata of each :class:`PackedLeaf`); called
  eagerly it scatters on the host with numpy and checks that each mask keeps as many entries as
  values are stored.

  >>> import numpy as np
  >>> params, masks = decompress(compress({"w": np.array([1., 2., 3.], np.float32)},
  ...                                     {"w": np.array([True, False, True])}))
  >>> params["w"].tolist(), masks["w"].tolist()
  ([1.0, 0.0, 3.0], [True, False, True])
  """
  paths, leaves, treedef = flatten_with_paths(compressed, is_leaf=_is_packed)
  params, masks = [], []
  for p, x in zip(paths, leaves):
    if _is_packed(x):
      dense, mask = _unpack_leaf(p, x)
      params.append(dense)
      masks.append(mask)
    else:
      params.append(x)
      masks.append(None)
  return treedef.unflatten(params), treedef.unflatten(masks)


def nbytes(tree) -> int:
  """Bytes held by the arrays of a (compressed or plain) pytree.

  >>> import numpy as np
  >>> nbytes(compress({"w": np.ones(64, np.float32)}, {"w": np.arange(64) < 8}))
  40
  """
  return sum(int(np.dtype(x.dtype).itemsize) * int(np.prod(x.shape))
             for x in jax.tree.leaves(tree) if is_array(x))
