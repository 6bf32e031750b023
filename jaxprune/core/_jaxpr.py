"""Helpers for the areas that interpret jaxprs (``scores.input_norms``, ``oneshot``,
``structure``): binding an equation again and finding the jaxpr of a call-like equation.

>>> import jax
>>> from jaxprune import core
>>> closed = jax.make_jaxpr(jax.jit(lambda x: x * 2))(1.0)
>>> eqn = closed.jaxpr.eqns[0]
>>> jaxpr, consts = core.inner_jaxpr(eqn)
>>> core.bind_equation(eqn, [3.0])[0]
Array(6., dtype=float32, weak_type=True)
"""

from __future__ import annotations

from jax.extend import core as jcore

# Call-like primitives whose body is evaluated with the call's own operands.
CALL_PRIMITIVES = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
                   "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint")


def bind_equation(eqn, invals, **override) -> list:
  """Binds ``eqn``'s primitive on ``invals`` (its params updated by ``override``): a list.

  The equation's context (e.g. a name stack or sharding context) is re-entered when jax
  recorded one, so the result is what tracing the original code gives.
  """
  bound = eqn.primitive.get_bind_params(dict(eqn.params, **override))
  subfuns, params = bound if isinstance(bound, tuple) else ((), bound)  # older jax: a pair
  ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
  if ctx is None:
    outs = eqn.primitive.bind(*subfuns, *invals, **params)
  else:
    with ctx:
      outs = eqn.primitive.bind(*subfuns, *invals, **params)
  return outs if eqn.primitive.multiple_results else [outs]


def inner_jaxpr(eqn):
  """``(jaxpr, consts)`` of a call-like equation whose body takes exactly its operands.

  None when ``eqn`` has no inner ``jaxpr``/``call_jaxpr`` or its body's inputs differ from
  the equation's (e.g. ``custom_vjp`` bodies with extra residual inputs).
  """
  sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
  if isinstance(sub, jcore.ClosedJaxpr):
    jaxpr, consts = sub.jaxpr, sub.consts
  elif isinstance(sub, jcore.Jaxpr):
    jaxpr, consts = sub, ()
  else:
    return None
  return (jaxpr, consts) if len(jaxpr.invars) == len(eqn.invars) else None
