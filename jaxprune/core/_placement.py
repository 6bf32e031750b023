"""Where small state arrays live: on the params' mesh, so a jitted step keeps one sharding.

The only module that asks whether a value is concrete: eagerly, state arrays are placed with
``jax.device_put``; under tracing the compiler places them.
"""

from __future__ import annotations

import jax


def _concrete(x) -> bool:
  return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def mesh_of(params):
  """The mesh of the first concrete ``NamedSharding``'ed leaf of ``params``, or None."""
  for leaf in jax.tree_util.tree_leaves(params):
    if _concrete(leaf) and isinstance(leaf.sharding, jax.sharding.NamedSharding):
      return leaf.sharding.mesh
  return None


def replicated_like(tree, params):
  """The single-device arrays of ``tree`` replicated on the mesh of ``params`` (if any).

  Keeps a state's scalars (step counts, keys) on the params' devices, so that the state's
  sharding is the same after ``init`` and after a jitted ``update`` (one trace).

  >>> import jax.numpy as jnp
  >>> int(replicated_like(jnp.zeros([], jnp.int32), {"w": jnp.ones(2)}))
  0
  """
  mesh = mesh_of(params)
  if mesh is None:
    return tree
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(x):
    if _concrete(x) and isinstance(x.sharding, jax.sharding.SingleDeviceSharding):
      return jax.device_put(x, replicated)
    return x

  return jax.tree_util.tree_map(place, tree)


def sharded_like(x, like):
  """``x`` (shaped like the array ``like``) on the sharding of ``like``, when both are concrete.

  >>> import jax.numpy as jnp
  >>> sharded_like(jnp.ones(2, bool), jnp.zeros(2)).tolist()
  [True, True]
  """
  if _concrete(like) and not isinstance(x, jax.core.Tracer):
    return jax.device_put(x, like.sharding)
  return x
