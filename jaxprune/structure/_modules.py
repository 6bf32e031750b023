"""flax nnx and equinox modules: ``(apply_fn, params)`` to trace, and a small module back."""

from __future__ import annotations

from jaxprune.core import describe


def _kind(model):
  try:
    from flax import nnx
    if isinstance(model, nnx.Module):
      return "nnx"
  except ImportError:  # pragma: no cover
    pass
  try:
    import equinox as eqx
    if isinstance(model, eqx.Module):
      return "equinox"
  except ImportError:  # pragma: no cover
    pass
  raise TypeError(f"expected a flax nnx or equinox module; got {describe(model)}. For flax "
                  "linen pass model.apply and the variables to structure.trace directly.")


def _nnx_split(model):
  from flax import nnx
  return nnx.split(model, (nnx.Param, nnx.BatchStat), ...)


def from_module(model):
  """``(apply_fn, params)`` of an nnx or equinox module, for :func:`trace` and :func:`prune`.

  nnx: params are the ``nnx.Param`` and ``nnx.BatchStat`` state (other state, e.g. RNG
  counters, is closed over); equinox: the inexact arrays (``eqx.is_inexact_array``).
  ``apply_fn(params, *args, **kwargs)`` calls the module rebuilt from them.

  >>> import equinox as eqx, jax, jax.numpy as jnp
  >>> from jaxprune import structure
  >>> mlp = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(0))
  >>> fn, params = structure.from_module(mlp)
  >>> small, _ = structure.prune(structure.trace(fn, params, jnp.ones(3)), params, 0.5)
  >>> small_mlp = structure.to_module(mlp, small)
  >>> small_mlp.layers[0].weight.shape, small_mlp(jnp.ones(3)).shape
  ((4, 3), (2,))
  """
  kind = _kind(model)
  if kind == "nnx":
    from flax import nnx
    graphdef, params, rest = _nnx_split(model)
    return (lambda p, *a, **k: nnx.merge(graphdef, p, rest)(*a, **k)), params
  import equinox as eqx
  params, static = eqx.partition(model, eqx.is_inexact_array)
  return (lambda p, *a, **k: eqx.combine(p, static)(*a, **k)), params


def to_module(model, small_params):
  """The module ``model`` with the (smaller) arrays of ``small_params``; call it as before.

  The module's code runs on the new shapes: right for layers that read their shapes from their
  arrays (nnx ``Linear``/``Conv``/``BatchNorm``/``LayerNorm``, equinox ``Linear``/``MLP``/
  ``Conv``); attributes such as ``in_features`` keep their old values. The ``small_apply``
  that :func:`prune` returns is exact for any model; prefer it where a layer reads a
  hyperparameter (e.g. a head count) instead of an array shape.

  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from jaxprune import structure
  >>> class MLP(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.l1, self.l2 = nnx.Linear(3, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.l2(jax.nn.relu(self.l1(x)))
  ...
  >>> model = MLP(nnx.Rngs(0))
  >>> fn, params = structure.from_module(model)
  >>> small, _ = structure.prune(structure.trace(fn, params, jnp.ones((1, 3))), params, 0.5)
  >>> small_model = structure.to_module(model, small)
  >>> small_model.l1.kernel.shape, small_model(jnp.ones((1, 3))).shape
  ((3, 4), (1, 2))
  """
  if _kind(model) == "nnx":
    from flax import nnx
    graphdef, _, rest = _nnx_split(model)
    return nnx.merge(graphdef, small_params, rest)
  import equinox as eqx
  _, static = eqx.partition(model, eqx.is_inexact_array)
  return eqx.combine(small_params, static)
