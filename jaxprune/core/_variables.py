"""flax nnx ``Variable`` leaves (``nnx.Param``, ``OptVariable``, ...) seen as the arrays they hold.

``nnx.Optimizer`` keeps its optax state wrapped: ``masks_of(optimizer.opt_state)`` gives an
``nnx.State`` whose leaves are ``OptVariable`` objects, while ``nnx.state(model, nnx.Param)``
gives ``Param`` objects. Their pytree structures differ by the wrapper type only. Functions that
align two trees (masks with params, ``previous=`` with scores) unwrap both with
:func:`unwrap_variables`, which calls ``flax.nnx.as_pure``. flax is not imported here: when
``flax.nnx`` was never imported, no tree can hold an nnx Variable and trees pass unchanged.
"""

from __future__ import annotations

import sys
from typing import Any


def is_variable(x: Any) -> bool:
  """True for a flax nnx ``Variable`` (``nnx.Param``, ``OptVariable``, ...), False otherwise.

  >>> is_variable({"w": 1.0})
  False
  """
  nnx = sys.modules.get("flax.nnx")
  return nnx is not None and isinstance(x, nnx.Variable)


def unwrap_variables(tree: Any) -> Any:
  """``tree`` with every nnx ``Variable`` replaced by the value it holds (``flax.nnx.as_pure``).

  An ``nnx.State`` stays an ``nnx.State`` (its leaves become arrays); trees without Variables
  are returned as they are.

  >>> unwrap_variables({"w": 1.0})
  {'w': 1.0}
  """
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return tree
  return nnx.as_pure(tree)
