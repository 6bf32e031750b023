"""Scenarios run in every process of a ``multiprocess.Cluster`` (see ``test_multihost.py``).

Each is a plain function: jax is initialised (2 processes x 2 CPU devices = one 4-device
mesh), arguments come as keywords, the result is JSON. Arrays are returned gathered
(``process_allgather``) as nested lists or checked in place. The same functions with
``mesh_devices=jax.devices()[:4]`` give the single-process reference in the test process.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxprune
from jaxprune import checkpoint

SHAPES = {"dense1": {"kernel": (16, 32), "bias": (32,)}, "dense2": {"kernel": (32, 8)}}


def mesh_1d(devices=None) -> Mesh:
  devices = jax.devices()[:4] if devices is None else devices
  return Mesh(np.array(devices), ("x",))


def _global(value: np.ndarray, sharding) -> jax.Array:
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def host_values(seed: int = 0) -> dict:
  """The same numpy params on every process (the data a real job would load)."""
  rng = np.random.default_rng(seed)
  return {name: {k: rng.standard_normal(shape).astype(np.float32) for k, shape in leaves.items()}
          for name, leaves in SHAPES.items()}


def sharded_params(mesh: Mesh, seed: int = 0) -> dict:
  """Kernels split over "x" (rows of the first, columns of the second), bias replicated."""
  values = host_values(seed)
  specs = {"dense1": {"kernel": P("x", None), "bias": P()}, "dense2": {"kernel": P(None, "x")}}
  return jax.tree.map(lambda v, s: _global(v, NamedSharding(mesh, s)), values, specs)


def gathered(tree):
  """Every array of ``tree`` as a full numpy array on this process (None kept)."""
  def get(x):
    if x is None:
      return None
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(get, tree, is_leaf=lambda x: x is None)


def as_lists(tree):
  return jax.tree.map(lambda x: None if x is None else np.asarray(x).tolist(), tree,
                      is_leaf=lambda x: x is None)


def digest(tree) -> dict:
  """``{path: hex of the bytes}`` of a gathered tree (bit-exact comparisons)."""
  paths, leaves, _ = jaxprune.core.flatten_with_paths(gathered(tree), is_leaf=lambda x: x is None)
  return {p: None if x is None else f"{x.dtype}{x.shape}:{x.tobytes().hex()}"
          for p, x in zip(paths, leaves)}


# ----------------------------------------------------------------------------- scenarios


def info() -> dict:
  return {"process": jax.process_index(), "processes": jax.process_count(),
          "devices": jax.device_count(), "local": jax.local_device_count()}


def global_masks(sparsity: float = 0.7, mesh_devices=None) -> dict:
  mesh = mesh_1d(mesh_devices)
  scores = jaxprune.scores.magnitude(sharded_params(mesh))
  masks = jax.jit(lambda s: jaxprune.masks.global_topk(s, sparsity))(scores)
  specs = jax.tree.map(lambda m: str(m.sharding.spec), masks)
  return {"masks": as_lists(gathered(masks)), "specs": specs,
          "kept": int(sum(np.sum(m) for m in jax.tree.leaves(gathered(masks))))}


def _loss(params, x, y):
  h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  return jnp.mean((h @ params["dense2"]["kernel"] - y) ** 2)


def train(steps: int = 20, sparsity: float = 0.75, mesh_devices=None) -> dict:
  """``optax.chain(adamw, jaxprune.prune(...))`` on params sharded over every process."""
  mesh = mesh_1d(mesh_devices)
  params = sharded_params(mesh)
  rng = np.random.default_rng(1)
  batch = NamedSharding(mesh, P("x", None))
  x = _global(rng.standard_normal((8, 16)).astype(np.float32), batch)
  y = _global(rng.standard_normal((8, 8)).astype(np.float32), batch)
  tx = optax.chain(optax.adamw(1e-2, weight_decay=1e-3),
                   jaxprune.prune(sparsity=jaxprune.schedules.polynomial(sparsity, 0, 12),
                                  every=4))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    grads = jax.grad(_loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    params, opt_state = step(params, opt_state, x, y)
  masks = jaxprune.masks_of(opt_state)
  full_params, full_masks = gathered(params), gathered(masks)
  nonzero_pruned = int(sum(jax.tree.leaves(jax.tree.map(
      lambda m, p: 0 if m is None else np.count_nonzero(p[~m]), full_masks, full_params,
      is_leaf=lambda x: x is None))))
  summary = jax.jit(jaxprune.summary.sparsity)(params)
  return {"masks": as_lists(full_masks), "nonzero_pruned": nonzero_pruned,
          "kernel_spec": str(params["dense1"]["kernel"].sharding.spec),
          "summary": {k: float(v) for k, v in jaxprune.summary.scalars(params).items()},
          "summary_jit": {k: float(np.asarray(v)) for k, v in summary.items()},
          "loss": float(_loss(params, x, y)),
          "params": as_lists(full_params)}


def _state(mesh):
  """Params sharded across processes, a host-local optax state, None masks, a PRNG key and a
  dict key with a dot."""
  params = sharded_params(mesh)
  opt = optax.adam(1e-3).init(params)
  masks = {"dense1": None, "dense2": jnp.ones((32, 8), bool)}
  return {"params": params, "opt": opt, "masks": masks,
          "key": jax.random.key(3), "cfg": {"lr.scale": np.float32(0.5), "lr": {"scale": 2}},
          "empty": jnp.zeros((0, 4))}


def checkpoint_round_trip(directory: str) -> dict:
  mesh = mesh_1d()
  state = _state(mesh)
  path = checkpoint.save(Path(directory) / "ckpt", state, metadata={"step": 20})
  same = checkpoint.restore(path, checkpoint.abstract(state))
  grid = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
  other = checkpoint.restore(path, checkpoint.abstract(
      state, lambda p, x: NamedSharding(grid, P("b", "a") if x.ndim == 2 and x.shape[0] else P())
      if x.ndim else None))
  raw = checkpoint.restore(path)
  files = sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())
  return {"same": digest(same) == digest(state), "other": digest(other) == digest(state),
          "raw_lr": [float(np.asarray(raw["cfg"]["lr.scale"])), int(raw["cfg"]["lr"]["scale"])],
          "same_spec": str(same["params"]["dense1"]["kernel"].sharding.spec),
          "other_spec": str(other["params"]["dense1"]["kernel"].sharding.spec),
          "count_type": type(same["opt"][0].count).__name__,
          "key_equal": bool(np.array_equal(jax.random.key_data(same["key"]),
                                           jax.random.key_data(state["key"]))),
          "metadata": checkpoint.metadata(path), "files": files,
          "digest": digest(same)}


def failed_save(directory: str, failing: int = 1) -> dict:
  """A save where one process raises while writing: every process raises, nothing changes."""
  from jaxprune.checkpoint import _save

  mesh = mesh_1d()
  state = _state(mesh)
  path = checkpoint.save(Path(directory) / "ckpt", state)
  before = {str(p): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}
  original = _save.own_files

  def boom(staging):
    raise OSError(f"disk full on process {jax.process_index()} (simulated)")

  if jax.process_index() == failing:
    _save.own_files = boom
  error = None
  try:
    changed = jax.tree.map(lambda x: x * 2 if isinstance(x, jax.Array) and x.ndim else x,
                           state["params"])
    checkpoint.save(path, {**state, "params": changed}, force=True)
  except Exception as err:  # expected on every process
    error = f"{type(err).__name__}: {err}"
  finally:
    _save.own_files = original
  after = {str(p): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}
  restored = checkpoint.restore(path, checkpoint.abstract(state))
  return {"error": error, "unchanged": before == after,
          "restored": digest(restored) == digest(state),
          "leftovers": sorted(p.name for p in Path(directory).iterdir())}


def disagree(directory: str, what: str) -> dict:
  """Processes disagree on the tree or the path: a ValueError on every process, no hang."""
  mesh = mesh_1d()
  params = sharded_params(mesh)
  path = Path(directory) / "ckpt"
  tree = {"params": params, "step": np.int32(3)}
  if what == "tree" and jax.process_index() == 1:
    tree["extra"] = np.ones(2, np.float32)
  if what == "path" and jax.process_index() == 1:
    path = Path(directory) / "elsewhere"
  if what == "value" and jax.process_index() == 1:
    tree["step"] = np.int32(4)
  out = {}
  try:
    checkpoint.save(path, tree)
    out["save"] = None
  except Exception as err:
    out["save"] = f"{type(err).__name__}: {err}"
  good = checkpoint.save(Path(directory) / "good", {"params": params, "step": np.int32(3)},
                         force=True)
  target = checkpoint.abstract({"params": params, "step": np.int32(3)})
  if what == "tree" and jax.process_index() == 1:
    target = {"params": target["params"]}
  if what == "path" and jax.process_index() == 1:
    good = Path(directory) / "missing"
  try:
    checkpoint.restore(good, target)
    out["restore"] = None
  except Exception as err:
    out["restore"] = f"{type(err).__name__}: {err}"
  out["leftovers"] = sorted(p.name for p in Path(directory).iterdir())
  return out


def export_save(directory: str) -> dict:
  """``jaxprune.export.save`` of params sharded across processes, then load on every process."""
  mesh = mesh_1d()
  params = sharded_params(mesh)
  masks = jax.jit(lambda s: jaxprune.masks.global_topk(s, 0.5))(jaxprune.scores.magnitude(params))
  out = {}
  try:
    path = jaxprune.export.save(Path(directory) / "export", params, masks)
    loaded, _ = jaxprune.export.load(path)
    out["save"], out["path"] = "ok", path
    out["equal"] = digest(jaxprune.apply_masks(params, masks)) == digest(loaded)
  except Exception as err:
    out["save"] = f"{type(err).__name__}: {str(err)[:500]}"
  return out



def absent(directory: str) -> dict:
  """Process 1 never calls save: process 0 fails after the (shortened) agreement timeout."""
  from jaxprune.core import processes as _sync

  os.environ["JAXPRUNE_CHECKPOINT_TIMEOUT"] = "3"
  try:
    if jax.process_index() == 1:
      _sync.next_operation()  # stay in step with process 0 for the next scenarios
      return {"save": "skipped"}
    try:
      checkpoint.save(Path(directory) / "ckpt", {"w": np.ones(2, np.float32)})
      return {"save": None}
    except Exception as err:
      return {"save": f"{type(err).__name__}: {err}"}
  finally:
    del os.environ["JAXPRUNE_CHECKPOINT_TIMEOUT"]


def sleep(seconds: float) -> None:
  import time
  time.sleep(seconds)


def rigl_checkpoint(directory: str, steps: int = 8) -> dict:
  """RigL steps on cross-process params, then its state (PRNG key included) round-trips."""
  mesh = mesh_1d()
  params = sharded_params(mesh)
  rng = np.random.default_rng(2)
  batch = NamedSharding(mesh, P("x", None))
  x = _global(rng.standard_normal((8, 16)).astype(np.float32), batch)
  y = _global(rng.standard_normal((8, 8)).astype(np.float32), batch)
  tx = jaxprune.rigl(optax.adam(1e-2), 0.75, every=2, end=6, allocate="uniform", key=0)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    grads = jax.grad(_loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    params, opt_state = step(params, opt_state, x, y)
  masks = jaxprune.masks_of(opt_state)
  full_params, full_masks = gathered(params), gathered(masks)
  nonzero_pruned = int(sum(jax.tree.leaves(jax.tree.map(
      lambda m, p: 0 if m is None else np.count_nonzero(p[~m]), full_masks, full_params,
      is_leaf=lambda x: x is None))))
  path = checkpoint.save(Path(directory) / "rigl", (params, opt_state))
  restored = checkpoint.restore(path, checkpoint.abstract((params, opt_state)))
  return {"nonzero_pruned": nonzero_pruned, "same": digest(restored) == digest((params, opt_state)),
          "sparsity": float(jaxprune.summary.scalars(params)["sparsity/total"]),
          "masks": digest(masks)}
