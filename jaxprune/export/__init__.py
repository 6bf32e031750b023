"""Compressed sparse export: kept values (float, int8 or int4) plus entropy-coded masks.

:func:`compress` turns masked params into a compact pytree: every masked leaf becomes a
:class:`PackedLeaf` with ``bits`` (the mask, row-major, ``np.packbits``: 1 bit per entry) and
``values`` (only the kept entries, row-major, original dtype), its ``shape`` kept as static
metadata; leaves whose mask is ``None`` stay dense. A leaf of ``n`` entries with ``k`` kept
takes ``n / 8 + k * itemsize`` bytes, e.g. 13.1% of the dense f32 bytes at 90% sparsity.
:func:`decompress` is its exact inverse (bit-identical kept values, pruned entries 0) and is
jit-able; :func:`compress` is host-side because its output size depends on the masks.

:func:`save`/:func:`load` write and read one self-checking file (format version 3, layout in
``jaxprune/export/_format.py``; version-2 files still load; no orbax involved): per masked
leaf its kept values, exact or quantised to int8/int4 with :mod:`jaxprune.quantize`
(``bits=8``/``4``, scales rounded up to bfloat16), and its mask, each in the smallest of
several codings chosen per leaf: a bitmap (raw/zlib/lzma) or the gaps between kept positions
coded with Golomb-Rice or an order-0 rANS entropy coder (pure numpy) for masks; shuffled
bytes, raw, zlib/lzma or rANS per byte plane for values. Writes are atomic (temporary file,
fsync, rename); loads check the header, the manifest's and every blob's SHA-256, and every
decoded size against the manifest, so truncated, corrupted or edited files raise a
``ValueError``. Container structure is stored as a tree (never joined names): no two keys can
collide. :func:`inspect` lists what each leaf costs on disk.

N:M structured layout (2:4 on sparse tensor cores): :func:`compress_n_of_m` stores, for every
group of ``m`` consecutive entries along the reduction axis, its ``n`` kept values
(``values`` has the param's shape with that axis shrunk from ``K`` to ``K·n/m``) and each kept
value's position in its group as a ``ceil(log2 m)``-bit index (2 bits for 2:4, four indices
per byte, lowest bits first, in row-major order of ``values``). That is the logical layout of
NVIDIA's 2:4 sparse matrices (cuSPARSELt / CUTLASS: compressed ``K/2`` values plus 2-bit
metadata per kept value; the vendor library further reorders the metadata into its hardware
tile order when it prepares the operand). Per f32 entry this is 0.5·4 + 0.5·0.25 = 2.125 bytes
(53% of dense; 56% for bf16).

>>> import numpy as np, jaxprune
>>> params = {"w": np.arange(16, dtype=np.float32).reshape(4, 4), "b": np.ones(4, np.float32)}
>>> masks = {"w": np.arange(16).reshape(4, 4) % 4 == 0, "b": None}
>>> small = jaxprune.export.compress(params, masks)
>>> small["w"].values.tolist(), jaxprune.export.nbytes(small) < jaxprune.export.nbytes(params)
([0.0, 4.0, 8.0, 12.0], True)
>>> restored, restored_masks = jaxprune.export.decompress(small)
>>> bool((restored["w"] == params["w"] * masks["w"]).all()), restored_masks["b"]
(True, None)
"""

from jaxprune.export._compress import PackedLeaf, compress, decompress, nbytes
from jaxprune.export._io import save
from jaxprune.export._load import inspect, load
from jaxprune.export._sparse import NofMLeaf, compress_n_of_m, decompress_n_of_m, to_bcoo

__all__ = [
    "NofMLeaf",
    "PackedLeaf",
    "compress",
    "compress_n_of_m",
    "decompress",
    "decompress_n_of_m",
    "inspect",
    "load",
    "nbytes",
    "save",
    "to_bcoo",
]
