"""Packing 4-bit integers two per byte (and back): numpy on numpy input, else jax (jit-able)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _xp(x):
  return np if isinstance(x, (np.ndarray, list, tuple)) else jnp


def pack_int4(values):
  """Packs int values in ``[-8, 7]`` two per byte: ``uint8[ceil(n / 2)]`` of the flat array.

  Entry ``2i`` goes to the low nibble of byte ``i`` and entry ``2i + 1`` to its high nibble,
  each as a 4-bit two's complement; an odd count leaves the last high nibble 0. Values
  outside ``[-8, 7]`` keep only their low 4 bits. Numpy in, numpy out; jax arrays (and
  tracers) are packed with ``jax.numpy``.

  >>> import numpy as np
  >>> pack_int4(np.array([1, -1, 7], np.int8)).tolist()  # 0xF1, 0x07
  [241, 7]
  """
  xp = _xp(values)
  flat = xp.asarray(values).reshape(-1).astype(xp.uint8) & xp.uint8(0xF)
  if flat.shape[0] % 2:
    flat = xp.concatenate([flat, xp.zeros((1,), xp.uint8)])
  pairs = flat.reshape(-1, 2)
  return pairs[:, 0] | (pairs[:, 1] << xp.uint8(4))


def unpack_int4(packed, count: int):
  """The inverse of :func:`pack_int4`: ``int8[count]`` in ``[-8, 7]``.

  >>> import numpy as np
  >>> unpack_int4(np.array([241, 7], np.uint8), 3).tolist()
  [1, -1, 7]
  """
  xp = _xp(packed)
  packed = xp.asarray(packed, xp.uint8).reshape(-1)
  nibbles = xp.stack([packed & xp.uint8(0xF), packed >> xp.uint8(4)], axis=-1)
  nibbles = nibbles.reshape(-1)[:count].astype(xp.int8)
  return xp.where(nibbles >= 8, nibbles - xp.int8(16), nibbles).astype(xp.int8)
