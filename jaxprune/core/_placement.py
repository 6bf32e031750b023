"""Where small state arrays live: on the params' mesh, so a jitted step keeps one sharding.

The only module that asks whether a value is concrete: eagerly, state arrays are placed with
``jax.device_put``; under tracing the compiler places them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.core._tracing import is_concrete_array, is_tracer


def _place(x, sharding):
  """``jax.device_put(x, sharding)``, also when ``sharding`` spans several processes.

  ``device_put`` refuses devices of other processes; there every process builds its own shards
  from its local value of ``x`` (the same in every process: a state's scalars and keys are
  computed from the same inputs everywhere).
  """
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys: place their data
    return jax.random.wrap_key_data(_place(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _concrete(x) -> bool:
  return is_concrete_array(x)


def mesh_of(params):
  """The mesh of the first concrete ``NamedSharding``'ed leaf of ``params``, or None.

  >>> import jax.numpy as jnp
  >>> mesh_of({"w": jnp.ones(2)}) is None  # not placed on a mesh
  True
  """
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
      return _place(x, replicated)
    return x

  return jax.tree_util.tree_map(place, tree)


def sharded_like(x, like):
  """``x`` (shaped like the array ``like``) on the sharding of ``like``, when both are concrete.

  >>> import jax.numpy as jnp
  >>> sharded_like(jnp.ones(2, bool), jnp.zeros(2)).tolist()
  [True, True]
  """
  if _concrete(like) and not is_tracer(x):
    return _place(x, like.sharding)
  return x
