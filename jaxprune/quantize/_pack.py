"""Packing 4-bit integers two per byte (and back), jit-able."""

from __future__ import annotations

import jax.numpy as jnp


def pack_int4(values):
  """Packs int values in ``[-8, 7]`` two per byte: ``uint8[ceil(n / 2)]`` of the flat array.

  Entry ``2i`` goes to the low nibble of byte ``i`` and entry ``2i + 1`` to its high nibble,
  each as a 4-bit two's complement; an odd count leaves the last high nibble 0. Values
  outside ``[-8, 7]`` keep only their low 4 bits.

  >>> import numpy as np
  >>> pack_int4(np.array([1, -1, 7], np.int8)).tolist()  # 0xF1, 0x07
  [241, 7]
  """
  flat = jnp.asarray(values).reshape(-1).astype(jnp.uint8) & jnp.uint8(0xF)
  if flat.shape[0] % 2:
    flat = jnp.concatenate([flat, jnp.zeros((1,), jnp.uint8)])
  pairs = flat.reshape(-1, 2)
  return pairs[:, 0] | (pairs[:, 1] << jnp.uint8(4))


def unpack_int4(packed, count: int):
  """The inverse of :func:`pack_int4`: ``int8[count]`` in ``[-8, 7]``.

  >>> import numpy as np
  >>> unpack_int4(np.array([241, 7], np.uint8), 3).tolist()
  [1, -1, 7]
  """
  packed = jnp.asarray(packed, jnp.uint8).reshape(-1)
  low = packed & jnp.uint8(0xF)
  high = packed >> jnp.uint8(4)
  nibbles = jnp.stack([low, high], axis=-1).reshape(-1)[:count].astype(jnp.int8)
  return jnp.where(nibbles >= 8, nibbles - jnp.int8(16), nibbles).astype(jnp.int8)
