"""Writing sparsity (and any other scalars) to TensorBoard or another scalar logger."""

from __future__ import annotations

import os
from typing import Any, Mapping

from jaxprune.summary._summary import scalars


def tensorboard(logdir: str | os.PathLike, **kwargs) -> Any:
  """A TensorBoard event-file writer for ``logdir`` (``tensorboardX.SummaryWriter``).

  Needs the ``tensorboard`` extra (``pip install "jaxprune[tensorboard]"``: tensorboardX, no
  TensorFlow). View with ``tensorboard --logdir <logdir>``. Close the writer when done
  (``writer.close()``, or use it in a ``with`` block).

  Args:
    logdir: the folder for the event files (created if missing).
    **kwargs: passed to ``tensorboardX.SummaryWriter`` (e.g. ``flush_secs=``).

  >>> import tempfile
  >>> with tensorboard(tempfile.mkdtemp()) as writer:  # doctest: +SKIP
  ...   log(writer, 0, params, {"accuracy": 0.9})
  """
  try:
    from tensorboardX import SummaryWriter
  except ImportError as err:
    raise ImportError("jaxprune.summary.tensorboard needs tensorboardX: pip install "
                      "'jaxprune[tensorboard]' (or pip install tensorboardX).") from err
  return SummaryWriter(logdir=os.fspath(logdir), **kwargs)


def log(writer, step: int, tree=None, extra: Mapping[str, float] | None = None, *,
        where=None, prefix: str = "sparsity/") -> dict[str, float]:
  """Writes the sparsity of ``tree`` (per leaf and total) and ``extra`` scalars at ``step``.

  ``writer`` is any scalar logger: one with ``add_scalar(name, value, step)`` (tensorboardX,
  ``torch.utils.tensorboard``; see :func:`tensorboard`) or with ``write_scalars(step, dict)``
  (CLU's metric writers). Call it outside ``jax.jit`` (values are fetched to the host).

  Args:
    writer: the logger.
    step: the training step.
    tree: params or masks whose sparsity is written as ``prefix + path`` and
      ``prefix + "total"`` (see :func:`scalars`), or None.
    extra: more ``{name: value}`` scalars (accuracy, loss, target sparsity, ...), or None.
    where: leaves to summarise (as in :func:`sparsity`).
    prefix: the name prefix of the sparsity scalars.

  Returns:
    The ``{name: float}`` scalars written.

  >>> import jax.numpy as jnp
  >>> class Printer:
  ...   def add_scalar(self, name, value, step):
  ...     print(step, name, value)
  >>> _ = log(Printer(), 3, {"w": jnp.array([[0., 1.]])}, {"accuracy": 0.75})
  3 sparsity/w 0.5
  3 sparsity/total 0.5
  3 accuracy 0.75
  """
  values = {} if tree is None else scalars(tree, where, prefix)
  values.update({name: float(value) for name, value in (extra or {}).items()})
  step = int(step)
  if hasattr(writer, "write_scalars"):
    writer.write_scalars(step, values)
  elif hasattr(writer, "add_scalar"):
    for name, value in values.items():
      writer.add_scalar(name, value, step)
  else:
    raise TypeError(f"summary.log: writer must have add_scalar(name, value, step) or "
                    f"write_scalars(step, scalars); got {type(writer).__name__}. Use "
                    f"jaxprune.summary.tensorboard(logdir) for a TensorBoard writer.")
  return values
