"""The public values of ``jaxprune.structure``: :class:`Member`, :class:`Group`, :class:`Graph`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Member:
  """One parameter axis cut by a group.

  Attributes:
    path: the parameter's path (``"Dense_0/kernel"``).
    axis: the axis of that parameter that the group cuts.
    indices: int array of shape ``(size, k)``: channel ``i`` of the group is the entries
      ``indices[i, :]`` along ``axis`` (``k = 1`` for a neuron or channel, ``k = head_dim``
      for an attention head of a flat projection; offsets for slices of a concatenation).

  >>> import jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
  >>> g = structure.trace(lambda p, x: x @ p["a"] @ p["b"], p, jnp.ones((1, 3)))
  >>> member = [m for m in g.find("a", 1)[0].members if m.path == "b"][0]
  >>> member.path, member.axis
  ('b', 0)
  """
  path: str
  axis: int
  indices: np.ndarray

  def __repr__(self):
    return f"Member({self.path!r}, axis={self.axis}, indices={self.indices.shape})"


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
  """Parameter slices that must be cut together: ``size`` channels across ``members``.

  Attributes:
    index: the group's position in :attr:`Graph.groups` (the key used by ``prune(keep=...)``
      and by per-group sparsities).
    members: the parameter axes the group cuts.
    size: number of channels (neurons, filters, heads) in the group.
    prunable: whether the group's channels can be removed.
    reason: why not, when ``prunable`` is False (``None`` otherwise).

  >>> import jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
  >>> g = structure.trace(lambda p, x: x @ p["a"] @ p["b"], p, jnp.ones((1, 3)))
  >>> group = g.find("a", 1)[0]
  >>> group.size, group.prunable, sorted((m.path, m.axis) for m in group.members)
  (4, True, [('a', 1), ('b', 0)])
  """
  index: int
  members: tuple[Member, ...]
  size: int
  prunable: bool
  reason: str | None = None

  @property
  def paths(self) -> tuple[str, ...]:
    """The paths of the members, in order."""
    return tuple(m.path for m in self.members)

  def __repr__(self):
    state = "prunable" if self.prunable else f"not prunable: {self.reason}"
    return f"Group({self.index}, size={self.size}, {len(self.members)} members, {state})"


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
  """Groups of coupled parameter axes found by :func:`jaxprune.structure.trace`.

  Iterating a graph yields its groups; ``graph[i]`` is group ``i``; ``print(graph)`` shows a
  table (group, size, prunable or why not, members as ``path:axis``).

  Attributes:
    groups: the groups, ordered by the first parameter they cut.

  >>> import jax.numpy as jnp
  >>> from jaxprune import structure
  >>> p = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
  >>> g = structure.trace(lambda p, x: x @ p["a"] @ p["b"], p, jnp.ones((1, 3)))
  >>> type(g).__name__, [grp.size for grp in g.groups if grp.prunable]
  ('Graph', [4])
  """
  groups: tuple[Group, ...]
  _traced: Any = dataclasses.field(default=None, repr=False)

  def __iter__(self):
    return iter(self.groups)

  def __len__(self):
    return len(self.groups)

  def __getitem__(self, i) -> Group:
    return self.groups[i]

  @property
  def prunable(self) -> tuple[Group, ...]:
    """The groups that can be cut."""
    return tuple(g for g in self.groups if g.prunable)

  def find(self, path: str, axis: int | None = None) -> tuple[Group, ...]:
    """The groups with a member at ``path`` (and ``axis`` when given).

    >>> import jax.numpy as jnp
    >>> from jaxprune import structure
    >>> p = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 2))}
    >>> g = structure.trace(lambda p, x: x @ p["a"] @ p["b"], p, jnp.ones((1, 3)))
    >>> [grp.size for grp in g.find("a", 1)]
    [4]
    """
    return tuple(g for g in self.groups
                 if any(m.path == path and (axis is None or m.axis == axis) for m in g.members))

  def __str__(self):
    rows = [("group", "size", "prunable", "members (path:axis[xk])")]
    for g in self.groups:
      members = ", ".join(
          f"{m.path}:{m.axis}" + (f"[x{m.indices.shape[1]}]" if m.indices.shape[1] > 1 else "")
          for m in g.members)
      rows.append((str(g.index), str(g.size), "yes" if g.prunable else f"no ({g.reason})",
                   members))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    return "\n".join(lines)
