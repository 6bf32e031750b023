"""Leaf paths, leaf kinds and dict-key escaping for checkpoints.

Orbax names every leaf by joining its keys with ``"."``, so ``{"a.b": x}`` and
``{"a": {"b": y}}`` would share one name on disk (the second silently overwrites the first).
Dict keys containing ``"."`` (or the escape character ``"%"``) are therefore escaped before a
tree reaches orbax (``"."`` → ``"%2E"``, ``"%"`` → ``"%25"``) and unescaped on restore; trees
without such keys are stored exactly as orbax stores them.

>>> escape_key("a.b"), unescape_key(escape_key("50%.x"))
('a%2Eb', '50%.x')
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core import at_path, is_array

_ESCAPES = (("%", "%25"), (".", "%2E"))


def key_name(key) -> str:
  """The plain name of one entry of a ``tree_flatten_with_path`` key path."""
  return jax.tree_util.keystr((key,), simple=True, separator="/")


def keys_of(keypath) -> tuple[str, ...]:
  """``("layers", "0", "kernel")`` for a key path."""
  return tuple(key_name(k) for k in keypath)


def show(keys) -> str:
  """A leaf path quoted for messages: ``'layers/0/kernel'``."""
  return at_path("/".join(keys))


def flatten(tree):
  """``[(keys, leaf)]`` with ``None`` leaves kept, and the treedef (None as a leaf)."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  return [(keys_of(kp), x) for kp, x in with_path], treedef


def is_key_array(x) -> bool:
  return is_array(x) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def is_scalar(x) -> bool:
  """Python/numpy real numbers and bools (orbax stores them as scalars)."""
  return (isinstance(x, (numbers.Number, np.number, np.bool_))
          and not isinstance(x, (complex, np.complexfloating)))


# ------------------------------------------------------------------------------- escaping


def escape_key(key: str) -> str:
  for raw, code in _ESCAPES:
    key = key.replace(raw, code)
  return key


def unescape_key(key: str) -> str:
  for raw, code in reversed(_ESCAPES):
    key = key.replace(code, raw)
  return key


def _needs_escape(key) -> bool:
  return isinstance(key, str) and ("." in key or "%" in key)


def needs_escaping(tree) -> bool:
  """Whether some dict key of ``tree`` holds ``"."`` or ``"%"``."""
  with_path = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
  return any(isinstance(k, jax.tree_util.DictKey) and _needs_escape(k.key)
             for kp, _ in with_path for k in kp)


def check_escapable(tree, where: str) -> None:
  """Rejects keys with ``"."`` in containers that cannot be rebuilt with renamed keys."""
  def visit(node, keys):
    if node is None or is_array(node) or is_scalar(node):
      return
    if type(node) is dict:
      for k, v in node.items():
        visit(v, keys + (str(k),))
      return
    with_path = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
    for kp, child in with_path:
      key = kp[0] if kp else None
      dict_key = key if isinstance(key, jax.tree_util.DictKey) else None
      if dict_key is not None and _needs_escape(dict_key.key):
        raise ValueError(
            f"{where}: the key {dict_key.key!r} at {show(keys + (key_name(key),))} contains '.' or "
            f"'%' inside a {type(node).__name__} (orbax joins names with '.', so it could "
            "collide with another leaf). Rename the key, or use a plain dict there (whose "
            "keys are escaped automatically).")
      visit(child, keys + ((key_name(key),) if key is not None else ()))
  visit(tree, ())


def rename_keys(tree, rename):
  """``tree`` with every key of every plain ``dict`` passed through ``rename``."""
  def visit(node):
    if node is None or is_array(node) or is_scalar(node) or isinstance(node, jax.ShapeDtypeStruct):
      return node
    if type(node) is dict:
      return {rename(k) if isinstance(k, str) else k: visit(v) for k, v in node.items()}
    children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if jax.tree_util.treedef_is_leaf(treedef):
      return node
    return treedef.unflatten([visit(c) for c in children])
  return visit(tree)


def escape_tree(tree):
  return rename_keys(tree, escape_key)


def unescape_tree(tree):
  return rename_keys(tree, unescape_key)
