"""One path string per pytree leaf, for any pytree (dicts, sequences, dataclasses, nnx.State)."""

from __future__ import annotations

from typing import Any, Callable

import jax

_tree = jax.tree_util


def key_to_str(key) -> str:
  """The string form of one key entry of a ``tree_flatten_with_path`` path.

  >>> import jax
  >>> key_to_str(jax.tree_util.DictKey("kernel")), key_to_str(jax.tree_util.SequenceKey(0))
  ('kernel', '0')
  """
  if isinstance(key, _tree.DictKey):
    return str(key.key)
  if isinstance(key, _tree.SequenceKey):
    return str(key.idx)
  if isinstance(key, _tree.GetAttrKey):
    return key.name
  if isinstance(key, _tree.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_to_str(keypath) -> str:
  """Joins a key path into ``"a/b/0/kernel"``; a trailing nnx ``value`` entry is dropped.

  >>> import jax
  >>> [(p, _) for p, _ in [(path_to_str(k), v) for k, v in
  ...   jax.tree_util.tree_flatten_with_path({"dense": [1, 2]})[0]]]
  [('dense/0', 1), ('dense/1', 2)]
  """
  parts = [key_to_str(k) for k in keypath]
  if parts and parts[-1] == "value" and isinstance(keypath[-1], _tree.GetAttrKey):
    parts = parts[:-1]
  return "/".join(parts)


def flatten_with_paths(tree, is_leaf: Callable[[Any], bool] | None = None):
  """Returns ``(paths, leaves, treedef)`` of ``tree``, paths as strings.

  >>> flatten_with_paths({"b": 1, "a": (2, None)})[0]
  ['a/0', 'b']
  """
  with_keys, treedef = _tree.tree_flatten_with_path(tree, is_leaf=is_leaf)
  paths = [path_to_str(k) for k, _ in with_keys]
  leaves = [v for _, v in with_keys]
  return paths, leaves, treedef


def tree_paths(tree) -> Any:
  """A pytree shaped like ``tree`` whose leaves are their path strings.

  >>> tree_paths({"layer": {"kernel": 0, "bias": 0}})
  {'layer': {'bias': 'layer/bias', 'kernel': 'layer/kernel'}}
  """
  paths, _, treedef = flatten_with_paths(tree)
  return treedef.unflatten(paths)
