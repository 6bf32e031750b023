"""Restore targets: checking a target against the checkpoint, and what orbax is asked for."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprune.checkpoint import _tree
from jaxprune.core import processes as _sync
from jaxprune.core import describe, is_array, is_concrete_array, listing


def expected(x):
  """``(shape, dtype)`` a target leaf needs on disk (PRNG keys are stored as their key data)."""
  if _tree.is_key_array(x):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return tuple(data.shape), np.dtype(data.dtype)
  return tuple(x.shape), np.dtype(x.dtype)


class _Empty:
  """Stands for an empty container in a target (orbax saves empty NamedTuples as None)."""

  def __repr__(self):
    return "an empty container"


def _is_empty_node(x) -> bool:
  if x is None or is_array(x) or _tree.is_scalar(x):
    return False
  return jax.tree_util.tree_structure(x, is_leaf=lambda y: y is None).num_leaves == 0


def unplaced(x) -> bool:
  """A target leaf that asks for no placement: abstract without sharding, or uncommitted."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return x.sharding is None
  return is_concrete_array(x) and not x.committed


def check_target(path, target, saved: dict) -> None:
  """``saved``: ``{keys: None | (kind, shape, dtype)}`` in the user's (unescaped) key names."""
  with_path = jax.tree_util.tree_flatten_with_path(
      target, is_leaf=lambda x: x is None or _is_empty_node(x))[0]
  entries = [(_tree.keys_of(kp), _Empty() if _is_empty_node(x) else x) for kp, x in with_path]
  names = {keys for keys, _ in entries}
  missing = [k for k in saved if k not in names]
  extra = [k for k, x in entries if k not in saved and not isinstance(x, _Empty)]
  if missing or extra:
    detail = ""
    if missing:
      detail += f" In the checkpoint but not in target: {listing('/'.join(k) for k in missing)}."
    if extra:
      detail += f" In target but not in the checkpoint: {listing('/'.join(k) for k in extra)}."
    raise ValueError(
        f"checkpoint.restore({str(path)!r}): target's tree structure does not match the "
        f"checkpoint's.{detail} Build target from the same init function that produced the "
        "saved tree (e.g. jax.eval_shape(init, ...)), or pass target=None to get the raw tree.")
  for keys, x in entries:
    _check_leaf(f"checkpoint.restore({str(path)!r}): at {_tree.show(keys)}", x, saved.get(keys))


def _check_leaf(where: str, x, s) -> None:
  if isinstance(x, _Empty):
    if s is not None:
      raise ValueError(f"{where} target has {x} but the checkpoint has an array of shape {s[1]}.")
    return
  if x is None or s is None:
    if (x is None) != (s is None):
      got = "None" if x is None else describe(x)
      has = "None" if s is None else f"an array of shape {s[1]}"
      raise ValueError(f"{where} target has {got} but the checkpoint has {has}. Make target's "
                       "None leaves match the saved tree.")
    return
  kind, shape, dtype = s
  if _tree.is_scalar(x) and not is_array(x):
    if shape != ():
      raise ValueError(f"{where} target is the scalar {x!r} but the checkpoint holds shape "
                       f"{shape}.")
    return
  if not is_array(x):
    raise TypeError(f"{where} unsupported target leaf {describe(x)}: use arrays, "
                    "jax.ShapeDtypeStruct (e.g. from jax.eval_shape), scalars or None.")
  want_shape, want_dtype = expected(x)
  if want_shape != shape:
    raise ValueError(f"{where} target has shape {tuple(x.shape)} but the checkpoint holds shape "
                     f"{shape}. Build target with the same model configuration as the saved one.")
  if kind in ("array", "empty") and dtype is not None and want_dtype != np.dtype(dtype):
    raise ValueError(f"{where} target has dtype {x.dtype} but the checkpoint holds {dtype}. "
                     f"Restore with dtype {dtype} and convert afterwards (x.astype(...)).")
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, jax.sharding.Sharding):
    try:
      sharding.shard_shape(tuple(x.shape))
    except Exception as err:
      raise ValueError(f"{where} target's sharding {sharding} does not fit shape "
                       f"{tuple(x.shape)}: {err}") from None


def _key_sharding():
  """Where a typed PRNG key without placement is read: one device, or replicated everywhere."""
  if _sync.count() == 1:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return NamedSharding(Mesh(np.array(jax.devices()), ("processes",)), PartitionSpec())


def orbax_target(target, drop: set):
  """The target handed to orbax, and how to finish each leaf that asked for no placement.

  Leaves without a requested placement come back uncommitted on the default device (like
  ``jnp.asarray``), so they mix with sharded arrays under ``jax.jit``: orbax reads them into
  numpy and ``jax.device_put`` moves them (typed PRNG keys go through their key data).
  """
  entries, treedef = _tree.flatten(target)
  out, finish = [], {}
  for keys, x in entries:
    if keys in drop:
      out.append(np.empty((1,), np.uint8))  # the stub stored for a zero-size array
    elif is_array(x) and unplaced(x):
      if _tree.is_key_array(x):
        finish[keys] = "key"
        out.append(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_key_sharding()))
      else:
        finish[keys] = "device"
        out.append(np.empty(x.shape, x.dtype))
    else:
      out.append(x)
  return treedef.unflatten(out), finish


def finish(tree, how: dict):
  if not how:
    return tree
  entries, treedef = _tree.flatten(tree)
  out = []
  for keys, x in entries:
    kind = how.get(keys)
    if kind == "device":
      x = jax.device_put(x)
    elif kind == "key":
      local = x.addressable_data(0)
      data = jax.device_put(np.asarray(jax.random.key_data(local)))
      x = jax.random.wrap_key_data(data, impl=jax.random.key_impl(local))
    out.append(x)
  return treedef.unflatten(out)


def fill_empty(tree, empty: list[dict], target_entries: dict | None):
  """Puts the zero-size arrays (stored in the manifest only) back, placed like the target."""
  by_path = {tuple(e["path"]): e for e in empty}
  if not by_path:
    return tree
  entries, treedef = _tree.flatten(tree)
  out = []
  for keys, x in entries:
    e = by_path.get(keys)
    if e is None:
      out.append(x)
      continue
    like = None if target_entries is None else target_entries.get(keys)
    shape, dtype = tuple(e["shape"]), np.dtype(e["dtype"])
    zeros = np.zeros(shape, dtype)
    if isinstance(like, np.ndarray) or (like is None and e.get("numpy")):
      out.append(zeros)
    elif like is None or unplaced(like):
      out.append(jax.device_put(zeros))
    else:
      out.append(jax.make_array_from_callback(shape, like.sharding, lambda i: zeros[i]))
  return treedef.unflatten(out)
