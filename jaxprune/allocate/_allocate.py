"""Per-leaf sparsities from one target: uniform, Erdős–Rényi-kernel (ERK), custom by regex.

Zero-size leaves are ignored (``None``) by every allocation.
"""

from __future__ import annotations

import numpy as np

from jaxprune import filters
from jaxprune.core import check_sparsity, flatten_with_paths, listing


def _static_sparsity(sparsity, name="sparsity") -> float:
  value = check_sparsity(sparsity, "", name)
  if not isinstance(value, float):
    raise TypeError(f"{name} must be a static Python float for allocation (it works on shapes "
                    "only, before tracing); got a traced value.")
  return value


def _selected(params, where):
  """Paths, leaves, treedef and the leaves allocated: selected by ``where`` and not empty.

  Zero-size leaves are never allocated a sparsity (None): they hold nothing to prune, and
  their ERK ratio ``sum(shape) / prod(shape)`` would be a division by zero.
  """
  paths, leaves, treedef = flatten_with_paths(params)
  chosen = [c and int(np.prod(np.shape(x))) > 0
            for c, x in zip(filters.select(params, where), leaves)]
  return paths, leaves, treedef, chosen


def uniform(params, sparsity: float, *, where=None):
  """The same sparsity for every selected leaf; ``None`` for the others.

  >>> import numpy as np
  >>> uniform({"w": np.zeros((4, 4)), "b": np.zeros(4)}, 0.8)
  {'b': None, 'w': 0.8}
  """
  value = _static_sparsity(sparsity)
  _, _, treedef, chosen = _selected(params, where)
  return treedef.unflatten([value if c else None for c in chosen])


def erk(params, sparsity: float, *, where=None, power: float = 1.0):
  """Erdős–Rényi-kernel allocation (Evci et al., 2020): density ∝ sum(shape) / prod(shape).

  Small layers get a higher density than large ones. A layer whose density would exceed 1
  becomes dense and the others are rescaled so that the total number of kept entries over
  the selected leaves matches ``1 - sparsity``.

  Args:
    params: pytree of arrays (only shapes are used).
    sparsity: target overall sparsity of the selected leaves.
    where: selected leaves (default ``ndim >= 2``).
    power: exponent on the ERK ratio (1.0 = ERK; 0.0 = uniform).

  >>> import numpy as np
  >>> s = erk({"a": np.zeros((10, 10)), "b": np.zeros((100, 100))}, 0.9)
  >>> round(s["a"], 3), round(s["b"], 3)
  (0.082, 0.908)
  """
  target = _static_sparsity(sparsity)
  paths, leaves, treedef, chosen = _selected(params, where)
  sizes = np.array([float(np.prod(x.shape)) for x, c in zip(leaves, chosen) if c])
  ratios = np.array([(np.sum(x.shape) / np.prod(x.shape)) ** power
                     for x, c in zip(leaves, chosen) if c], dtype=np.float64)
  densities = _erk_densities(sizes, ratios, 1.0 - target)
  values = iter(1.0 - densities)
  return treedef.unflatten([float(next(values)) if c else None for c in chosen])


def _erk_densities(sizes, ratios, density):
  """Solves sum(min(1, eps * ratio) * size) = density * sum(size) for eps."""
  dense = np.zeros(len(sizes), bool)
  budget = density * sizes.sum()
  while True:
    free = ~dense
    weight = (ratios * sizes)[free].sum()
    if weight == 0:
      break
    eps = (budget - sizes[dense].sum()) / weight
    over = free & (eps * ratios > 1.0)
    if not over.any():
      break
    dense |= over
  out = np.where(dense, 1.0, np.clip(eps * ratios, 0.0, 1.0) if weight else 1.0)
  return out


def custom(params, rules: dict, *, default=None, where=None):
  """Sparsity per leaf by regex: the first pattern that matches a path wins.

  Args:
    params: pytree of arrays.
    rules: ``{regex: sparsity}``; each pattern is searched in the leaf paths.
    default: sparsity for selected leaves no pattern matches (``None`` = not pruned).
    where: the leaves the rules apply to (default ``ndim >= 2``).

  Raises:
    ValueError: a pattern matches no selected leaf (a typo, most likely), or a sparsity is
      outside [0, 1].

  >>> import numpy as np
  >>> p = {"embed": np.zeros((8, 4)), "dense": np.zeros((4, 4))}
  >>> custom(p, {"embed": 0.5}, default=0.9)
  {'dense': 0.9, 'embed': 0.5}
  """
  if not isinstance(rules, dict):
    raise TypeError(f"rules must be a dict {{regex: sparsity}}; got {type(rules).__name__}.")
  compiled = [(filters.regex(p), _static_sparsity(s, f"sparsity for {p!r}"))
              for p, s in rules.items()]
  fallback = None if default is None else _static_sparsity(default, "default")
  paths, leaves, treedef, chosen = _selected(params, where)
  out, used = [], set()
  for path, leaf, c in zip(paths, leaves, chosen):
    value = fallback if c else None
    for i, (f, s) in enumerate(compiled):
      if c and f(path, leaf):
        value = s
        used.add(i)
        break
    out.append(value)
  unused = [p for i, p in enumerate(rules) if i not in used]
  if unused:
    seen = [p for p, c in zip(paths, chosen) if c]
    raise ValueError(f"custom: pattern(s) {unused} matched no selected leaf. Selected paths: "
                     f"{listing(seen)}. Fix the pattern or widen where=.")
  return treedef.unflatten(out)
