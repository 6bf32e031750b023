"""group_lasso over structure groups (duck-typed Group/Member), and the bridges."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune
from jaxprune import regularize


@dataclasses.dataclass(frozen=True)
class Member:
  path: str
  axis: int
  indices: np.ndarray


@dataclasses.dataclass(frozen=True)
class Group:
  index: int
  members: tuple
  size: int
  prunable: bool = True
  reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Graph:
  groups: tuple


H = 6


def _mlp(seed=0):
  rng = np.random.default_rng(seed)
  return {"l0": {"kernel": jnp.asarray(rng.normal(size=(4, H)), jnp.float32),
                 "bias": jnp.asarray(rng.normal(size=H), jnp.float32)},
          "l1": {"kernel": jnp.asarray(rng.normal(size=(H, 2 * 3)), jnp.float32)}}


def _graph():
  ar = np.arange(H)[:, None]
  hidden = Group(0, (Member("l0/kernel", 1, ar), Member("l0/bias", 0, ar),
                     Member("l1/kernel", 0, ar)), H)
  heads = Group(1, (Member("l1/kernel", -1, np.arange(6).reshape(2, 3)),), 2, prunable=False,
                reason="network output")
  return Graph((hidden, heads))


def _joint_np(params, tau):
  k0, b0, k1 = (np.asarray(params["l0"]["kernel"]), np.asarray(params["l0"]["bias"]),
                np.asarray(params["l1"]["kernel"]))
  norm = np.sqrt((k0 ** 2).sum(0) + b0 ** 2 + (k1 ** 2).sum(1))
  f = np.where(norm > tau, 1 - tau / norm, 0.0)
  return {"l0": {"kernel": k0 * f, "bias": b0 * f}, "l1": {"kernel": k1 * f[:, None]}}, norm


def test_joint_group_norm_over_members_matches_numpy():
  params = _mlp()
  _, norm = _joint_np(params, 0.0)
  tau = float(np.median(norm))
  tx = optax.chain(optax.sgd(0.0), regularize.group_lasso(tau, groups=_graph()))
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(params, state, params)
  new = optax.apply_updates(params, updates)
  ref, _ = _joint_np(params, tau)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
  gone = np.asarray(new["l0"]["bias"]) == 0
  assert 0 < gone.sum() < H
  assert np.all(np.asarray(new["l0"]["kernel"])[:, gone] == 0)  # coupled slices vanish together
  assert np.all(np.asarray(new["l1"]["kernel"])[gone] == 0)
  # the groups as a sequence work too; the non-prunable group is left alone
  tx2 = optax.chain(optax.sgd(0.0), regularize.group_lasso(tau, groups=list(_graph().groups)))
  new2 = optax.apply_updates(params, tx2.update(params, tx2.init(params), params)[0])
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(new2)):
    np.testing.assert_array_equal(a, b)

  zero = regularize.zero_groups(new, _graph())
  np.testing.assert_array_equal(zero[0], np.flatnonzero(gone))
  assert set(zero) == {0}
  kept = regularize.kept_channels(new, _graph())
  np.testing.assert_array_equal(kept[0], np.flatnonzero(~gone))
  all_zero = jax.tree.map(jnp.zeros_like, new)
  assert regularize.kept_channels(all_zero, _graph())[0].tolist() == [0]  # keeps one channel


def test_groups_that_do_not_match_the_params_are_errors():
  params = _mlp()
  ar = np.arange(H)[:, None]
  bad_path = Graph((Group(0, (Member("l9/kernel", 1, ar),), H),))
  with pytest.raises(ValueError, match="'l9/kernel' but the params have no array there"):
    regularize.group_lasso(0.1, groups=bad_path).init(params)
  bad_index = Graph((Group(0, (Member("l0/kernel", 1, ar + 3),), H),))
  with pytest.raises(ValueError, match=r"indices outside \[0, 6\)"):
    regularize.group_lasso(0.1, groups=bad_index).init(params)
  bad_size = Graph((Group(0, (Member("l0/kernel", 1, ar),), H + 1),))
  with pytest.raises(ValueError, match="group of size 7 has indices of shape"):
    regularize.group_lasso(0.1, groups=bad_size).init(params)
  bad_axis = Graph((Group(0, (Member("l0/bias", 1, ar),), H),))
  with pytest.raises(ValueError, match="axis 1 is out of range for the leaf at 'l0/bias'"):
    regularize.group_lasso(0.1, groups=bad_axis).init(params)
  with pytest.raises(ValueError, match="where= must be None with structure groups"):
    regularize.group_lasso(0.1, groups=_graph(), where="kernel")
  with pytest.raises(TypeError, match="kept_channels: needs a jaxprune.structure graph"):
    regularize.kept_channels(params, -1)


def test_masks_from_zeros_then_keep_sparse_fine_tuning():
  params = _mlp()
  tx = optax.chain(optax.sgd(0.0), regularize.l1(0.8))
  sparse = optax.apply_updates(params, tx.update(params, tx.init(params), params)[0])
  masks = regularize.masks_from_zeros(sparse)
  assert masks["l0"]["bias"] is None
  for m, w in zip(jax.tree.leaves(masks), [sparse["l0"]["kernel"], sparse["l1"]["kernel"]]):
    np.testing.assert_array_equal(np.asarray(m), np.asarray(w) != 0)
  ft = optax.chain(optax.adam(0.1), jaxprune.keep_sparse(masks))
  state, p = ft.init(sparse), sparse
  for _ in range(3):
    updates, state = ft.update(jax.tree.map(jnp.ones_like, p), state, p)
    p = optax.apply_updates(p, updates)
  for m, w in zip(jax.tree.leaves(masks), [p["l0"]["kernel"], p["l1"]["kernel"]]):
    np.testing.assert_array_equal(np.asarray(w) != 0, np.asarray(m))
  zero = regularize.zero_groups(sparse, -1)  # per output column
  for path, w in (("l0/kernel", sparse["l0"]["kernel"]), ("l1/kernel", sparse["l1"]["kernel"])):
    np.testing.assert_array_equal(zero[path], np.flatnonzero(np.all(np.asarray(w) == 0, 0)))


@pytest.mark.skipif(not hasattr(jaxprune, "structure"), reason="jaxprune.structure not merged")
def test_with_the_graph_of_structure_trace():
  structure = jaxprune.structure
  params = _mlp()
  apply_fn = lambda p, x: jnp.tanh(x @ p["l0"]["kernel"] + p["l0"]["bias"]) @ p["l1"]["kernel"]
  x = jnp.ones((3, 4))
  graph = structure.trace(apply_fn, params, x)
  hidden = [g for g in graph.groups if g.prunable]
  assert hidden and hidden[0].size == H
  tau = float(np.median(_joint_np(params, 0.0)[1]))
  tx = optax.chain(optax.sgd(0.0), regularize.group_lasso(tau, groups=graph))
  new = optax.apply_updates(params, tx.update(params, tx.init(params), params)[0])
  ref, _ = _joint_np(params, tau)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
  small, small_apply = structure.prune(graph, new, keep=regularize.kept_channels(new, graph))
  assert small["l0"]["kernel"].shape[1] == int((_joint_np(params, tau)[1] > tau).sum())
  np.testing.assert_allclose(small_apply(small, x), apply_fn(new, x), rtol=1e-5, atol=1e-6)
