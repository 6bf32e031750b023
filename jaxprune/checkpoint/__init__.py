"""Checkpoints of params, masks and optimizer states with orbax, on any number of processes.

:func:`save` writes a standard orbax checkpoint (``StandardCheckpointHandler``) atomically and
records a self-checksummed manifest; :func:`restore` verifies it and restores onto a target's
structure and shardings (concrete arrays, or abstract ones from ``jax.eval_shape`` /
:func:`abstract`). ``None`` leaves (masks of unpruned leaves), NamedTuple states
(``PruneState``, RigL, optax chains), zero-size arrays, dict keys containing ``"."`` and sharded
arrays round-trip exactly, so training resumes bit for bit.

In a multi-process job (``jax.distributed``, Cloud TPU pod slices) every process calls
:func:`save` / :func:`restore` with the same arguments: each writes and checksums its own
shards, process 0 finalises, and any failure or disagreement between processes is raised on
every process instead of hanging.

Orbax's own APIs work on the same trees (``ocp.CheckpointManager`` with
``ocp.args.StandardSave``/``StandardRestore`` for step-numbered checkpoints and cloud storage);
these helpers add atomic overwrite, file and manifest checksums, errors raised on every process,
and errors that name the leaf path.

>>> import tempfile, jax, jax.numpy as jnp, optax
>>> params = {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}
>>> state = {"params": params, "opt": optax.adam(1e-3).init(params),
...          "masks": {"w": jnp.ones((4, 4), bool), "b": None}}
>>> path = save(tempfile.mkdtemp() + "/step_100", state)
>>> restored = restore(path, jax.eval_shape(lambda: state))
>>> type(restored["opt"][0]).__name__, restored["masks"]["b"]
('ScaleByAdamState', None)
"""

from jaxprune.checkpoint._restore import abstract, metadata, restore
from jaxprune.checkpoint._save import save

__all__ = [
    "abstract",
    "metadata",
    "restore",
    "save",
]
