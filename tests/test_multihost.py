"""jaxprune on a multi-process JAX runtime: 2 local processes x 2 CPU devices, one 4-device mesh.

Each test runs a scenario of ``multihost_scenarios.py`` in both processes of one shared
``multiprocess.Cluster`` (started once per module) with a hard timeout: a hang kills the
processes and fails the test. References come from the same scenario run in this (single)
process on 4 of its 8 fake devices, and from numpy.
"""

import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import multihost_scenarios as sc
from jaxprune import checkpoint
from multiprocess import Cluster, Hang
from reference import global_reference


@pytest.fixture(scope="module")
def cluster():
  c = Cluster(n=2, devices=2)
  try:
    yield c
  finally:
    c.close()


def _values(results):
  bad = [r for r in results if not r.ok]
  assert not bad, bad
  return [r.value for r in results]


def test_two_processes_share_one_mesh(cluster):
  values = _values(cluster.run(sc.info, timeout=120))
  assert [v["process"] for v in values] == [0, 1]
  assert all(v["processes"] == 2 and v["devices"] == 4 and v["local"] == 2 for v in values)


def test_global_masks_are_exact_across_processes(cluster):
  values = _values(cluster.run(sc.global_masks, timeout=120, sparsity=0.7))
  assert values[0] == values[1]
  single = sc.global_masks(0.7, mesh_devices=jax.devices()[:4])
  assert values[0]["masks"] == single["masks"]
  assert values[0]["specs"]["dense1"]["kernel"] == str(P("x", None))
  scores = [np.abs(x) for x in jax.tree.leaves(sc.host_values()) if x.ndim >= 2]
  expected = global_reference(scores, 0.7)
  masks = values[0]["masks"]
  assert [masks["dense1"]["kernel"], masks["dense2"]["kernel"]] == [e.tolist() for e in expected]
  assert masks["dense1"]["bias"] is None


@pytest.mark.slow  # two compilations of a prune training step (one per runtime)
def test_prune_training_across_processes_matches_single_process(cluster):
  values = _values(cluster.run(sc.train, timeout=240, steps=20))
  assert values[0]["masks"] == values[1]["masks"]
  assert all(v["nonzero_pruned"] == 0 for v in values)  # pruned weights exactly 0
  assert values[0]["summary"] == {"sparsity/dense1/kernel": 0.75, "sparsity/dense2/kernel": 0.75,
                                  "sparsity/total": 0.75}
  assert values[0]["summary_jit"]["total"] == 0.75
  single = sc.train(20, mesh_devices=jax.devices()[:4])
  assert values[0]["masks"] == single["masks"]
  np.testing.assert_allclose(np.array(values[0]["params"]["dense2"]["kernel"]),
                             np.array(single["params"]["dense2"]["kernel"]), rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_onto_same_and_other_sharding(cluster, tmp_path):
  values = _values(cluster.run(sc.checkpoint_round_trip, timeout=120, directory=str(tmp_path)))
  for v in values:
    assert v["same"] and v["other"] and v["key_equal"]
    assert v["same_spec"] == str(P("x", None)) and v["other_spec"] == str(P("b", "a"))
    assert v["raw_lr"] == [0.5, 2]  # {"lr.scale": ..., "lr": {"scale": ...}} kept apart
    assert v["metadata"] == {"step": 20}
  assert values[0]["digest"] == values[1]["digest"]
  files = values[0]["files"]
  assert any(f.startswith("ocdbt.process_1/") for f in files)
  manifest = json.loads((tmp_path / "ckpt" / "jaxprune_checkpoint.json").read_text())
  assert manifest["processes"] == 2 and set(manifest["files"]) == set(files) - {
      "jaxprune_checkpoint.json"}
  # Restored here, in one process, onto 8 devices: a third sharding and another topology.
  mesh = Mesh(np.array(jax.devices()), ("x",))
  state = sc._state(Mesh(np.array(jax.devices()[:4]), ("x",)))
  target = checkpoint.abstract(state, lambda p, x: NamedSharding(
      mesh, P("x") if x.ndim and x.shape[0] % 8 == 0 and x.shape[0] else P()) if x.ndim else None)
  here = checkpoint.restore(tmp_path / "ckpt", target)
  assert here["params"]["dense1"]["kernel"].sharding.spec == P("x")
  assert sc.digest(here) == sc.digest(state)
  assert {k: v for k, v in sc.digest(here).items()} == values[0]["digest"]


def test_failed_save_on_one_process_keeps_the_previous_checkpoint(cluster, tmp_path):
  values = _values(cluster.run(sc.failed_save, timeout=120, directory=str(tmp_path)))
  assert values[0]["error"].startswith("OSError: process 1 failed: OSError: disk full")
  assert values[1]["error"] == "OSError: disk full on process 1 (simulated)"
  for v in values:
    assert v["unchanged"] and v["restored"] and v["leftovers"] == ["ckpt"]


@pytest.mark.parametrize("what,save,restore", [
    ("tree", "disagree on the tree structure", "disagree on the target structure"),
    ("path", "disagree on the checkpoint path", "no checkpoint at"),
    ("value", "disagree on the values of host-local leaves", None)])
def test_processes_that_disagree_get_a_clear_error_on_every_process(
    cluster, tmp_path, what, save, restore):
  values = _values(cluster.run(sc.disagree, timeout=60, directory=str(tmp_path), what=what))
  for v in values:
    assert v["save"].startswith("ValueError") and save in v["save"], v["save"]
    if restore is None:
      assert v["restore"] is None
    else:
      assert restore in v["restore"], v["restore"]
    assert v["leftovers"] == ["good"]  # nothing written for the refused save
  assert values[0]["save"] == values[1]["save"]


def test_a_process_that_never_arrives_is_a_timeout_error_not_a_hang(cluster, tmp_path):
  values = _values(cluster.run(sc.absent, timeout=60, directory=str(tmp_path)))
  assert values[1]["save"] == "skipped"
  assert values[0]["save"].startswith("TimeoutError") and "process 1 did not report" in (
      values[0]["save"])


def test_export_save_of_cross_process_params_writes_one_exact_file(cluster, tmp_path):
  """Every process calls export.save: shards are gathered, process 0 writes, all get the path."""
  values = _values(cluster.run(sc.export_save, timeout=120, directory=str(tmp_path)))
  assert [v["save"] for v in values] == ["ok", "ok"], values
  assert values[0]["equal"] and values[1]["equal"]
  assert values[0]["path"] == values[1]["path"] == str(tmp_path / "export")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary left


def test_export_save_failing_on_the_primary_fails_on_every_process(cluster, tmp_path):
  (tmp_path / "export").write_bytes(b"already there")  # process 0 refuses to overwrite
  values = _values(cluster.run(sc.export_save, timeout=120, directory=str(tmp_path)))
  assert [v["save"].split(":")[0] for v in values] == ["FileExistsError"] * 2, values


def test_a_hanging_scenario_fails_within_its_timeout(cluster):
  with pytest.raises(Hang, match="did not finish within 2 s"):
    cluster.run(sc.sleep, timeout=2, seconds=60)
  assert _values(cluster.run(sc.info, timeout=120))[0]["processes"] == 2  # a fresh cluster


def test_rigl_steps_and_checkpoint_across_processes(cluster, tmp_path):
  values = _values(cluster.run(sc.rigl_checkpoint, timeout=240, directory=str(tmp_path)))
  assert values[0]["masks"] == values[1]["masks"]
  for v in values:
    assert v["nonzero_pruned"] == 0 and v["same"] and v["sparsity"] == 0.75
