"""Mask-aware int8/int4 quantisation of pruned params, and fake quantisation for QAT.

:func:`quantize` turns the selected leaves (default: floating leaves with ``ndim >= 2``) into
:class:`QuantizedLeaf` (int8 ``values``, float32 ``scale``, optional int8 ``zero``) with scales
per channel, per group or per tensor, computed from the kept weights only; :func:`dequantize`
returns floats in which every pruned entry is exactly 0. :func:`fake_quantize` is the
straight-through form for quantisation-aware fine-tuning. ``jaxprune.export.save(...,
bits=8)`` writes the quantised form to disk; it quantises with ``scale_dtype=jnp.bfloat16``
(each scale rounded up to a bfloat16, stored in 2 bytes), which :func:`quantize` and
:func:`fake_quantize` also take, so that QAT sees exactly the rounding of the export.

>>> import jax, jax.numpy as jnp, jaxprune
>>> w = jax.random.normal(jax.random.key(0), (256, 8))
>>> masks = jaxprune.masks.topk({"w": jnp.abs(w)}, 0.9)
>>> q = jaxprune.quantize.quantize({"w": w}, 4, group_size=128, masks=masks)
>>> q["w"].values.dtype, q["w"].scale.shape  # one scale per group of 128 inputs per output
(dtype('int8'), (2, 8))
>>> back = jaxprune.quantize.dequantize(q)["w"]
>>> bool((back[~masks["w"]] == 0).all()), bool((jnp.abs(back - w)[masks["w"]] <= 0.5 *
...     jnp.repeat(q["w"].scale, 128, axis=0)[masks["w"]] + 1e-6).all())
(True, True)

Pairing with qwix (the JAX quantisation library, ``pip install qwix``; not a dependency):
a :class:`QuantizedLeaf` has qwix's ``QArray`` layout (``original ≈ (qvalue - zero_point) *
scale``, ``scale`` of the same rank, each entry covering a tile), so it converts field by
field::

    import qwix
    def to_qarray(q):                       # q: a jaxprune QuantizedLeaf
      qtype = "int4" if q.bits == 4 else "int8"
      return qwix.QArray(qvalue=q.values.astype(qtype), scale=q.scale,
                         zero_point=None if q.zero is None else q.zero.astype(qtype),
                         qtype=qtype)
    qparams = jax.tree.map(lambda x: to_qarray(x) if jaxprune.quantize.is_quantized(x)
                           else x, q, is_leaf=jaxprune.quantize.is_quantized)
    # qwix.dequantize(to_qarray(leaf)) equals jaxprune.quantize.dequantize(leaf) (f32)

For serving through qwix's PTQ model (``qwix.quantize_model(model, qwix.PtqProvider(rules))``)
its abstract params hold ``WithAux(QArray)`` leaves; put the converted arrays there (their
scale shapes match a rule with ``weight_qtype="int8"`` per channel, or ``"int4"`` with
``tile_size=128`` for ``group_size=128``). For QAT with qwix instead of
:func:`fake_quantize`, run ``qwix.QtProvider`` training on the pruned model and keep
``jaxprune.keep_sparse(masks)`` last in the optax chain: pruned weights stay 0, and
:func:`quantize` with the same granularity gives the int values to export.
"""

from jaxprune.quantize._fake import fake_quantize
from jaxprune.quantize._pack import pack_int4, unpack_int4
from jaxprune.quantize._quantize import (
    QuantizedLeaf, dequantize, is_quantized, quantize, quantized_nbytes)

__all__ = [
    "QuantizedLeaf",
    "dequantize",
    "fake_quantize",
    "is_quantized",
    "pack_int4",
    "quantize",
    "quantized_nbytes",
    "unpack_int4",
]
