"""Conjugate gradients over lists of leaves (float32), with an iteration count.

A fixed iteration cap and ``lax.while_loop`` keep it jit-friendly; it stops early at the
relative residual ``tol`` or on non-positive curvature (the indefinite Hessian), returning the
last iterate, which still decreases the quadratic model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def dot(u, v):
  """``Σ_leaves <u, v>`` in float32."""
  return sum(jnp.vdot(x, y) for x, y in zip(u, v))


def cg(operator, b, steps: int, tol):
  """Solves ``operator(x) = b`` from ``x = 0``; returns ``(x, iterations, negative_curvature)``.

  >>> import jax.numpy as jnp
  >>> x, n, neg = cg(lambda v: [2.0 * v[0]], [jnp.array([2.0, 4.0])], 5, 1e-6)
  >>> x[0].tolist(), int(n), bool(neg)
  ([1.0, 2.0], 1, False)
  """
  rs0 = dot(b, b)
  floor = jnp.asarray(tol, F32) ** 2 * rs0
  zeros = [jnp.zeros_like(x) for x in b]

  def cond(c):
    i, _, _, _, rs, ok = c
    return (i < steps) & ok & (rs > floor)

  def body(c):
    i, x, r, p, rs, _ = c
    ap = operator(p)
    pap = dot(p, ap)
    ok = pap > 0
    alpha = jnp.where(ok, rs / jnp.where(ok, pap, 1.0), 0.0)
    x = [xi + alpha * pi for xi, pi in zip(x, p)]
    r = [ri - alpha * ai for ri, ai in zip(r, ap)]
    rs_new = dot(r, r)
    beta = jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)
    p = [ri + beta * pi for ri, pi in zip(r, p)]
    return i + jnp.asarray(ok).astype(jnp.int32), x, r, p, rs_new, ok

  init = (jnp.zeros((), jnp.int32), zeros, b, b, rs0, jnp.ones((), bool))
  i, x, _, _, _, ok = jax.lax.while_loop(cond, body, init)
  return x, i, ~ok
