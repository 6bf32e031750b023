"""Tests of jaxprune.checkpoint: exact round trips, shardings, resumed training, bad input."""

import os
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune import checkpoint
from jaxprune.checkpoint import _manifest, _tree


class FakePruneState(NamedTuple):  # shaped like jaxprune.transforms.PruneState
  count: jax.Array
  masks: Any


# ------------------------------------------------------------------------------ helpers


def _kind(x):
  if x is None:
    return None
  if isinstance(x, (jax.Array, np.ndarray, np.generic)):
    return "array"
  return type(x)


def assert_bitwise_equal(a, b, *, same_containers=True):
  """Same structure (None leaves included), and every leaf equal to the bit."""
  fa, ta = jax.tree_util.tree_flatten_with_path(a, is_leaf=lambda x: x is None)
  fb, tb = jax.tree_util.tree_flatten_with_path(b, is_leaf=lambda x: x is None)
  if same_containers:
    assert ta == tb, f"{ta} != {tb}"
  pa = [_tree.keys_of(k) for k, _ in fa]
  pb = [_tree.keys_of(k) for k, _ in fb]
  assert sorted(pa) == sorted(pb)
  lb = dict(zip(pb, [v for _, v in fb]))
  for keys, x in zip(pa, [v for _, v in fa]):
    y = lb[keys]
    assert _kind(x) == _kind(y), (keys, x, y)
    if x is None:
      continue
    if _kind(x) != "array":
      assert x == y and type(x) is type(y), (keys, x, y)
      continue
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert x.dtype == y.dtype
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, (keys, x.dtype, y.dtype, x.shape, y.shape)
    assert x.tobytes() == y.tobytes(), keys


def _normal(key, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(key), shape).astype(dtype)


def odd_params():
  return {
      "layers": [
          {"kernel": _normal(0, (6, 4)), "bias": None},
          ({"kernel": _normal(1, (4, 3), jnp.bfloat16)}, None, _normal(2, (3,), jnp.float16)),
      ],
      "scalar": jnp.float32(-0.0),
      "int": jnp.arange(5, dtype=jnp.int32),
      "nan": jnp.array([jnp.nan, -jnp.inf, -0.0], jnp.float32),
  }


def odd_masks():
  return {
      "layers": [
          {"kernel": jax.random.bernoulli(jax.random.key(3), 0.3, (6, 4)), "bias": None},
          ({"kernel": jnp.zeros((4, 3), bool)}, None, None),  # 100% sparsity
      ],
      "scalar": None,
      "int": None,
      "nan": jnp.ones(3, bool),  # 0% sparsity
  }


# ----------------------------------------------------------------------------- round trips


TREES = {
    "params": odd_params,
    "masks": odd_masks,
    "optax_chain": lambda: optax.chain(optax.clip(1.), optax.adamw(1e-3)).init(odd_params()),
    "prune_state": lambda: FakePruneState(jnp.int32(7), odd_masks()),
    "list_root": lambda: [jnp.ones(3), None, (jnp.zeros((2, 2), jnp.bfloat16),)],
    "leaf_root": lambda: _normal(4, (5,)),
    "none_root": lambda: None,
    "empty_dict": lambda: {},
    "all_none": lambda: {"a": None, "b": [None, None]},
    "empty_containers": lambda: {"a": {}, "b": (), "c": optax.EmptyState(), "d": jnp.ones(2)},
    "zero_size": lambda: {"w": jnp.zeros((0, 3)), "m": np.zeros((2, 0), bool), "x": jnp.ones(1)},
    "keys_and_scalars": lambda: {"key": jax.random.key(5), "raw": jax.random.PRNGKey(1),
                                 "n": 3, "f": 2.5, "flag": True},
}


@pytest.mark.parametrize("name", sorted(TREES))
def test_round_trip_with_abstract_target_is_exact(tmp_path, name):
  tree = TREES[name]()
  path = checkpoint.save(tmp_path / "ckpt", tree)
  assert path == (tmp_path / "ckpt").absolute() and path.is_dir()
  target = jax.eval_shape(TREES[name])
  # eval_shape turns Python scalars into 0-d arrays: they are restored as such.
  expected = jax.tree.map(
      lambda x, t: np.asarray(x, t.dtype) if isinstance(x, (bool, int, float)) else x,
      tree, target)
  assert_bitwise_equal(checkpoint.restore(path, target), expected)


@pytest.mark.parametrize("name", sorted(TREES))
def test_round_trip_with_concrete_target_and_without_target(tmp_path, name):
  tree = TREES[name]()
  checkpoint.save(tmp_path / "c", tree)
  assert_bitwise_equal(checkpoint.restore(tmp_path / "c", tree), tree)
  raw = checkpoint.restore(tmp_path / "c")  # dicts and lists instead of NamedTuples / tuples
  if name not in ("empty_containers", "optax_chain"):  # EmptyState comes back as None
    assert_bitwise_equal(raw, tree, same_containers=False)


def test_restore_without_target_gives_dicts_and_lists(tmp_path):
  checkpoint.save(tmp_path / "c", FakePruneState(jnp.int32(2), (jnp.ones(2, bool), None)))
  raw = checkpoint.restore(tmp_path / "c")
  assert raw["masks"][1] is None and int(raw["count"]) == 2


def test_flax_nnx_state_and_equinox_round_trip(tmp_path):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(3, 4, rngs=rngs)
  state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  checkpoint.save(tmp_path / "nnx", state)
  out = checkpoint.restore(tmp_path / "nnx", jax.eval_shape(lambda: state))
  assert type(out) is type(state)
  assert_bitwise_equal(out, state)

  mlp = eqx.nn.MLP(3, 2, 4, 2, key=jax.random.key(0))
  arrays, static = eqx.partition(mlp, eqx.is_array)
  checkpoint.save(tmp_path / "eqx", arrays)
  out = checkpoint.restore(tmp_path / "eqx", arrays)
  assert_bitwise_equal(out, arrays)
  x = jnp.ones(3)
  assert np.array_equal(eqx.combine(out, static)(x), mlp(x))


def test_saved_checkpoint_is_a_plain_orbax_checkpoint(tmp_path):
  tree = FakePruneState(jnp.int32(3), odd_masks())
  checkpoint.save(tmp_path / "c", tree)
  out = ocp.StandardCheckpointer().restore(tmp_path / "c", jax.eval_shape(lambda: tree))
  assert_bitwise_equal(out, tree)


def test_orbax_checkpoint_manager_works_on_prune_like_states(tmp_path, mesh):
  """Orbax's standard step-managed API handles the same trees (None leaves, NamedTuples)."""
  sharding = NamedSharding(mesh, P("x"))
  tree = {"params": jax.device_put(_normal(0, (16, 4)), sharding),
          "opt": FakePruneState(jnp.int32(1), {"w": jnp.ones((16, 4), bool), "b": None})}
  with ocp.CheckpointManager(tmp_path / "run") as manager:
    manager.save(10, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    out = manager.restore(10, args=ocp.args.StandardRestore(checkpoint.abstract(tree)))
  assert out["params"].sharding == sharding
  assert_bitwise_equal(out, tree)


DTYPES = [np.float32, jnp.bfloat16, np.float16, np.int8, np.uint32, np.bool_]


@st.composite
def pytrees(draw, depth=0):
  kind = draw(st.sampled_from(["array", "none", "dict", "list", "tuple"] if depth < 2
                              else ["array", "none"]))
  if kind == "none":
    return None
  if kind == "array":
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    bits = np.random.default_rng(seed).integers(0, 256, (int(np.prod(shape)) *
                                                         np.dtype(dtype).itemsize,), np.uint8)
    x = bits.view(dtype).reshape(shape) if dtype != np.bool_ else (bits % 2).astype(bool).reshape(
        shape)
    return jnp.asarray(x) if draw(st.booleans()) else x
  children = draw(st.lists(pytrees(depth=depth + 1), min_size=0, max_size=3))
  if kind == "dict":
    return {f"k{i}": c for i, c in enumerate(children)}
  return children if kind == "list" else tuple(children)


@settings(max_examples=12, deadline=None)
@given(tree=pytrees())
def test_random_pytrees_round_trip_to_the_bit(tmp_path_factory, tree):
  """Random bit patterns (NaN payloads, -0.0, subnormals), dtypes, nesting, None leaves."""
  path = tmp_path_factory.mktemp("hyp") / "c"
  checkpoint.save(path, tree)
  assert_bitwise_equal(checkpoint.restore(path, tree), tree)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  out = checkpoint.restore(path, abstract)
  assert_bitwise_equal(jax.tree.map(np.asarray, out), jax.tree.map(np.asarray, tree))


# ------------------------------------------------------------------------------ shardings


def _sharded_target(mesh, tree):
  def choose(path, x):
    if x.ndim >= 1 and x.shape[0] % 8 == 0:
      return NamedSharding(mesh, P("x"))
    if x.ndim >= 2 and x.shape[1] % 8 == 0:
      return NamedSharding(mesh, P(None, "x"))
    return NamedSharding(mesh, P())
  return checkpoint.abstract(jax.eval_shape(lambda: tree), choose)


def test_restore_onto_requested_shardings(tmp_path, mesh):
  tree = {"w": _normal(0, (16, 8)), "v": _normal(1, (3, 8), jnp.bfloat16),
          "m": FakePruneState(jnp.int32(4), {"w": jnp.ones((16, 8), bool), "b": None}),
          "odd": _normal(2, (5,))}
  checkpoint.save(tmp_path / "c", tree)  # saved on one device
  target = _sharded_target(mesh, tree)
  out = checkpoint.restore(tmp_path / "c", target)
  got = jax.tree.leaves(jax.tree.map(lambda x: x.sharding, out))
  want = jax.tree.leaves(jax.tree.map(lambda x: x.sharding, target))
  assert got == want
  assert out["w"].sharding.spec == P("x") and out["v"].sharding.spec == P(None, "x")
  assert_bitwise_equal(out, tree)


def test_sharded_save_restores_onto_other_sharding_and_concrete_target(tmp_path, mesh):
  row = NamedSharding(mesh, P("x"))
  col = NamedSharding(mesh, P(None, "x"))
  tree = {"w": jax.device_put(_normal(0, (8, 16)), row), "mask": None}
  checkpoint.save(tmp_path / "c", tree)
  out = checkpoint.restore(tmp_path / "c", checkpoint.abstract(tree, col))
  assert out["w"].sharding == col and out["mask"] is None
  again = checkpoint.restore(tmp_path / "c", {"w": jax.device_put(jnp.zeros((8, 16)), row),
                                              "mask": None})
  assert again["w"].sharding == row
  assert_bitwise_equal(out, tree)
  assert_bitwise_equal(checkpoint.restore(tmp_path / "c"), tree)


def test_zero_size_leaf_restores_onto_target_sharding(tmp_path, mesh):
  tree = {"w": jnp.zeros((0, 8)), "x": jnp.ones((2, 8))}
  checkpoint.save(tmp_path / "c", tree)
  sharding = NamedSharding(mesh, P(None, "x"))
  out = checkpoint.restore(tmp_path / "c", checkpoint.abstract(tree, sharding))
  assert out["w"].shape == (0, 8) and out["w"].sharding == sharding


def test_abstract_keeps_shardings_and_rejects_bad_sharding(mesh):
  row = NamedSharding(mesh, P("x"))
  a = checkpoint.abstract({"w": jax.device_put(jnp.ones((8, 2)), row), "b": None, "n": 3})
  assert isinstance(a["w"], jax.ShapeDtypeStruct) and a["w"].sharding == row
  assert a["b"] is None and a["n"] == 3
  with pytest.raises(TypeError, match="sharding"):
    checkpoint.abstract({"w": jnp.ones(2)}, "x")
  with pytest.raises(TypeError, match="'w'"):
    checkpoint.abstract({"w": jnp.ones(2)}, lambda path, x: "nope")
  with pytest.raises(ValueError, match=r"'v'.*does not fit"):
    checkpoint.abstract({"v": jnp.ones(2)}, NamedSharding(mesh, P(None, "x")))


# ------------------------------------------------------------------------- resumed training


def _loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["dense"][0]["kernel"] + params["dense"][0]["bias"])
  out = h @ params["dense"][1]["kernel"]
  return jnp.mean((out - y) ** 2)


def _setup(sharding=None):
  params = {"dense": [{"kernel": _normal(0, (8, 16)), "bias": jnp.zeros(16)},
                      {"kernel": _normal(1, (16, 8)), "bias": None}]}
  masks = {"dense": [{"kernel": jax.random.bernoulli(jax.random.key(2), 0.5, (8, 16)),
                      "bias": None},
                     {"kernel": jax.random.bernoulli(jax.random.key(3), 0.5, (16, 8)),
                      "bias": None}]}
  if sharding is not None:
    params = jax.tree.map(lambda x: jax.device_put(x, sharding(x)), params)
    masks = jax.tree.map(lambda x: jax.device_put(x, sharding(x)), masks)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-2))

  @jax.jit
  def step(params, state, batch):
    opt_state, fake = state
    grads = jax.grad(_loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    params = jax.tree.map(lambda p, m: p if m is None else jnp.where(m, p, 0), params,
                          fake.masks, is_leaf=lambda x: x is None)
    return params, (opt_state, FakePruneState(fake.count + 1, fake.masks))

  state = (tx.init(params), FakePruneState(jnp.zeros((), jnp.int32), masks))
  return params, state, step


def _batches(n):
  return [(_normal(10 + i, (4, 8)), _normal(100 + i, (4, 8))) for i in range(n)]


@pytest.mark.parametrize("sharded", [True])  # the unsharded case runs with the real transforms
def test_training_resumes_bit_identically(tmp_path, mesh, sharded):
  sharding = None
  if sharded:
    sharding = lambda x: NamedSharding(mesh, P("x") if x.shape[0] % 8 == 0 else P())
  batches = _batches(6)
  params, state, step = _setup(sharding)
  init = (params, state)
  for b in batches:
    params, state = step(params, state, b)
  straight = (params, state)

  params, state = init
  for b in batches[:3]:
    params, state = step(params, state, b)
  checkpoint.save(tmp_path / "step3", {"params": params, "state": state, "step": 3})
  del params, state
  target = jax.eval_shape(lambda: {"params": init[0], "state": init[1], "step": 3})
  if sharded:
    target = checkpoint.abstract(target, lambda p, x: sharding(x) if x.ndim else
                                 NamedSharding(mesh, P()))
  restored = checkpoint.restore(tmp_path / "step3", target)
  assert restored["step"] == 3 and isinstance(restored["state"][1], FakePruneState)
  params, state = restored["params"], restored["state"]
  if sharded:
    assert params["dense"][0]["kernel"].sharding.spec == P("x")
  for b in batches[3:]:
    params, state = step(params, state, b)
  assert_bitwise_equal((params, state), straight)


def _transforms():
  return pytest.importorskip("jaxprune.transforms")


def _transform_cases(transforms):
  cases = [("prune", lambda params: transforms.prune(sparsity=0.75, every=2, begin=0, end=6)),
           ("keep_sparse", lambda params: transforms.keep_sparse(
               jax.tree.map(lambda x: x > 0 if x.ndim >= 2 else None, params)))]
  if hasattr(transforms, "rigl"):
    cases.append(("rigl", lambda params: transforms.rigl(
        optax.adam(1e-2), 0.75, every=2, end=6, allocate="uniform", key=0)))
  if hasattr(transforms, "sparse_evolution"):
    cases.append(("sparse_evolution", lambda params: transforms.sparse_evolution(
        optax.adam(1e-2), 0.75, every=2, end=6, allocate="uniform", key=1)))
  return cases


@pytest.mark.parametrize("sharded", [False, True])
def test_real_transform_states_resume_bit_identically(tmp_path, mesh, sharded):
  transforms = _transforms()
  for name, make in _transform_cases(transforms):
    params = {"dense": [{"kernel": _normal(0, (8, 16)), "bias": jnp.zeros(16)},
                        {"kernel": _normal(1, (16, 8)), "bias": None}]}
    if sharded:
      params = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(
          mesh, P("x") if x.shape[0] % 8 == 0 else P())), params)
    inner = make(params)
    tx = inner if name in ("rigl", "sparse_evolution") else optax.chain(
        optax.adamw(1e-2), inner)

    @jax.jit
    def step(params, opt_state, batch, tx=tx):
      grads = jax.grad(_loss)(params, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    batches = _batches(8)
    opt_state = tx.init(params)
    init = (params, opt_state)
    for b in batches:
      params, opt_state = step(params, opt_state, b)
    straight = (params, opt_state)
    params, opt_state = init
    for b in batches[:4]:
      params, opt_state = step(params, opt_state, b)
    path = checkpoint.save(tmp_path / f"{name}-{sharded}", (params, opt_state))
    target = checkpoint.abstract(init)  # abstract leaves placed like the initial state
    params, opt_state = checkpoint.restore(path, target)
    masks = transforms.masks_of(opt_state)
    assert masks["dense"][0]["bias"] is None, name
    for b in batches[4:]:
      params, opt_state = step(params, opt_state, b)
    assert_bitwise_equal((params, opt_state), straight)


# ------------------------------------------------------------------------------- bad input


@pytest.fixture()
def saved(tmp_path):
  tree = {"enc": {"kernel": _normal(0, (64, 32)), "bias": jnp.zeros(32)}, "mask": None}
  path = checkpoint.save(tmp_path / "c", tree)
  return path, tree


def _files(path):
  return sorted(p for p in Path(path).rglob("*") if p.is_file())


def test_target_tree_mismatch_names_paths(saved):
  path, tree = saved
  with pytest.raises(ValueError, match=r"'enc/bias'.*"):
    checkpoint.restore(path, {"enc": {"kernel": tree["enc"]["kernel"]}, "mask": None})
  with pytest.raises(ValueError, match=r"In target but not in the checkpoint: \['extra'\]"):
    checkpoint.restore(path, {**tree, "extra": jnp.ones(2)})
  with pytest.raises(ValueError, match=r"at 'mask'.*None"):
    checkpoint.restore(path, {**tree, "mask": jnp.ones(2)})
  with pytest.raises(ValueError, match=r"at 'enc/bias'.*None"):
    checkpoint.restore(path, {"enc": {"kernel": tree["enc"]["kernel"], "bias": None},
                              "mask": None})


def test_target_shape_dtype_and_sharding_mismatch(saved, mesh):
  path, tree = saved
  bad = {"enc": {"kernel": jax.ShapeDtypeStruct((64, 16), jnp.float32), "bias": jnp.zeros(32)},
         "mask": None}
  with pytest.raises(ValueError, match=r"'enc/kernel'.*shape \(64, 16\).*\(64, 32\)"):
    checkpoint.restore(path, bad)
  bad["enc"]["kernel"] = jax.ShapeDtypeStruct((64, 32), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"'enc/kernel'.*dtype bfloat16.*float32"):
    checkpoint.restore(path, bad)
  bias = jax.ShapeDtypeStruct((32,), jnp.float32, sharding=NamedSharding(mesh, P("x")))
  ok = checkpoint.restore(path, {"enc": {"kernel": tree["enc"]["kernel"], "bias": bias},
                                 "mask": None})
  assert ok["enc"]["bias"].sharding.spec == P("x")
  three = jax.ShapeDtypeStruct((3,), jnp.float32)
  checkpoint.save(path.parent / "three", {"v": jnp.ones(3)})
  with pytest.raises(ValueError, match=r"'v'.*sharding"):
    checkpoint.restore(path.parent / "three", {"v": jax.ShapeDtypeStruct(
        three.shape, three.dtype, sharding=NamedSharding(mesh, P("x")))})


def test_missing_path_and_file_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    checkpoint.restore(tmp_path / "nowhere")
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    checkpoint.restore(tmp_path / "file")


def test_truncated_file_is_detected(saved):
  path, tree = saved
  biggest = max(_files(path), key=lambda p: p.stat().st_size)
  with open(biggest, "r+b") as f:
    f.truncate(biggest.stat().st_size // 2)
  rel = biggest.relative_to(path).as_posix()
  with pytest.raises(ValueError, match=rf"corrupted: file '{rel}' has \d+ bytes.*truncated"):
    checkpoint.restore(path, tree)
  with pytest.raises(ValueError, match=str(path)):  # orbax itself fails to read it
    checkpoint.restore(path, tree, verify=False)


def test_flipped_byte_is_detected(saved):
  path, tree = saved
  biggest = max(_files(path), key=lambda p: p.stat().st_size)
  with open(biggest, "r+b") as f:
    f.seek(biggest.stat().st_size // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x10]))
  with pytest.raises(ValueError, match="SHA-256.*does not match"):
    checkpoint.restore(path, tree)


@pytest.mark.parametrize("victim", ["_METADATA", "manifest.ocdbt"])
def test_missing_or_corrupted_orbax_files_are_detected(saved, victim):
  path, tree = saved
  (path / victim).unlink()
  with pytest.raises(ValueError, match=f"file '{victim}' is missing"):
    checkpoint.restore(path, tree)


def test_manifest_missing_or_garbled(saved):
  path, tree = saved
  manifest = path / _manifest.MANIFEST
  manifest.write_text("{not json")
  with pytest.raises(ValueError, match="unreadable or corrupted"):
    checkpoint.restore(path, tree)
  manifest.unlink()
  with pytest.raises(ValueError, match="verify=False"):
    checkpoint.restore(path, tree)
  assert_bitwise_equal(checkpoint.restore(path, tree, verify=False), tree)


def test_plain_orbax_checkpoint_reads_with_verify_false(tmp_path):
  tree = {"w": _normal(0, (4, 4)), "m": None}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "plain", tree)
    ckptr.wait_until_finished()
  assert_bitwise_equal(checkpoint.restore(tmp_path / "plain", tree, verify=False), tree)


def test_existing_path_needs_force_and_is_replaced_atomically(saved):
  path, tree = saved
  before = {p: p.read_bytes() for p in _files(path)}
  with pytest.raises(FileExistsError, match="force=True"):
    checkpoint.save(path, {"other": jnp.ones(2)})
  assert {p: p.read_bytes() for p in _files(path)} == before
  checkpoint.save(path, {"other": jnp.ones(2)}, force=True)
  assert_bitwise_equal(checkpoint.restore(path), {"other": jnp.ones(2)})
  assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no leftovers


def test_failed_save_overwrites_nothing(saved, monkeypatch):
  path, tree = saved
  before = {p: p.read_bytes() for p in _files(path)}

  def boom(*args, **kwargs):
    raise OSError("disk full (simulated)")

  monkeypatch.setattr(_manifest, "write", boom)
  with pytest.raises(OSError, match="disk full"):
    checkpoint.save(path, {"other": jnp.ones(3)}, force=True)
  monkeypatch.undo()
  assert {p: p.read_bytes() for p in _files(path)} == before
  assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # temp dir cleaned up
  assert_bitwise_equal(checkpoint.restore(path, tree), tree)
  with pytest.raises(OSError, match="disk full"):  # a fresh path is not created either
    monkeypatch.setattr(_manifest, "write", boom)
    checkpoint.save(path.parent / "new", {"other": jnp.ones(3)})
  assert not (path.parent / "new").exists()


def test_unsupported_leaves_rejected_before_writing(saved):
  path, tree = saved
  before = {p: p.read_bytes() for p in _files(path)}
  with pytest.raises(TypeError, match=r"'cfg/name'.*str"):
    checkpoint.save(path, {"cfg": {"name": "mlp"}, "w": jnp.ones(2)}, force=True)
  with pytest.raises(TypeError, match=r"'tag'.*str_"):
    checkpoint.save(path, {"tag": np.str_("x"), "w": jnp.ones(2)}, force=True)
  with pytest.raises(TypeError, match=r"'w'.*abstract"):
    checkpoint.save(path, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}, force=True)
  with pytest.raises(TypeError, match="metadata must be JSON"):
    checkpoint.save(path, {"w": jnp.ones(2)}, force=True, metadata={"f": object()})
  assert {p: p.read_bytes() for p in _files(path)} == before


def test_save_under_jit_is_rejected(tmp_path):
  @jax.jit
  def f(x):
    checkpoint.save(tmp_path / "c", {"x": x})
    return x
  with pytest.raises(TypeError, match=r"'x'.*tracer.*outside jax.jit"):
    f(jnp.ones(2))
  assert not (tmp_path / "c").exists()


def test_metadata_round_trip(tmp_path):
  checkpoint.save(tmp_path / "c", {"w": jnp.ones(2)}, metadata={"step": 5, "tags": ["a"]})
  assert checkpoint.metadata(tmp_path / "c") == {"step": 5, "tags": ["a"]}
  checkpoint.save(tmp_path / "d", {"w": jnp.ones(2)})
  assert checkpoint.metadata(tmp_path / "d") is None
