"""Second-order weight compensation after pruning (Optimal Brain Surgeon idea).

``compensate`` moves the kept weights to the minimum of the local quadratic model of the loss
with the pruned weights held at zero, by conjugate gradients on masked Gauss-Newton, empirical
Fisher or Hessian vector products, with damping relative to the curvature's scale and a
step-size search that never returns a higher calibration loss than plain masking.

>>> import jax.numpy as jnp, jaxprune
>>> loss = lambda p: jnp.sum((p["w"] @ jnp.array([1., 1.]) - 2.) ** 2)  # wants w0 + w1 = 2
>>> new = jaxprune.compensation.compensate(loss, {"w": jnp.array([1., 1.])},
...                                        {"w": jnp.array([True, False])}, damping=0.0, method="hessian")
>>> new["w"].tolist()
[2.0, 0.0]
"""

from jaxprune.compensation._compensate import CompensateInfo, compensate

__all__ = ["CompensateInfo", "compensate"]
