"""Structured pruning that physically removes channels, neurons and attention heads.

:func:`trace` follows a model's jaxpr and finds the *groups*: sets of parameter axes that must
be cut together (a layer's output features, its bias, the next layer's input features, the
norm scales in between, every writer into a residual stream, the columns of an attention
head). :func:`group_scores` ranks each group's channels; :func:`prune` cuts the lowest ones out
of the arrays and returns physically smaller params with a function that runs them.

>>> import jax, jax.numpy as jnp
>>> from jaxprune import structure
>>> p = {"w1": jnp.arange(24.).reshape(3, 8), "w2": jnp.ones((8, 2))}
>>> f = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
>>> graph = structure.trace(f, p, jnp.ones((1, 3)))
>>> small, small_f = structure.prune(graph, p, 0.5)
>>> small["w1"].shape, small["w2"].shape, small_f(small, jnp.ones((5, 3))).shape
((3, 4), (4, 2), (5, 2))
"""

from jaxprune.structure._graph import Graph, Group, Member
from jaxprune.structure._modules import from_module, to_module
from jaxprune.structure._prune import masks, prune
from jaxprune.structure._scores import group_scores
from jaxprune.structure._select import select
from jaxprune.structure._trace import trace

__all__ = ["Graph", "Group", "Member", "from_module", "group_scores", "masks", "prune", "select",
           "to_module", "trace"]
