"""The pruning study (examples/study.py) and the shared example code (examples/common.py).

One end-to-end run of the study with --quick in a subprocess; the rest in-process and small.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import common  # noqa: E402
import study  # noqa: E402


def test_study_quick_end_to_end(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  expected = [m.name for m in study.METHODS.values() if m.default]  # all, not --quick's 3
  proc = subprocess.run(
      [sys.executable, str(EXAMPLES / "study.py"), "--quick", "--sparsities", "0.8", "--out",
       "out", "--methods", ",".join(expected)], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["study.json", "study.png"]
  assert (tmp_path / "out" / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  results = json.loads((tmp_path / "out" / "study.json").read_text())
  assert [r["method"] for r in results["results"]] == expected
  for r in results["results"]:
    assert r["sparsity"] == 0.8
    assert r["measured_sparsity"] == pytest.approx(0.8, abs=2e-3), r
    assert 0.0 <= r["final"]["accuracy"] <= 1.0 and np.isfinite(r["final"]["loss"])
    assert (r["one_shot"] is None) == (r["kind"] == "training")
  assert len(results["dense"]) == 1 and results["dense"][0]["accuracy"] > 0.15
  out = proc.stdout
  assert "one-shot, right after pruning" in out and "run time:" in out
  headers = [line.split() for line in out.splitlines() if line.strip().startswith("sparsity")]
  assert len(headers) == 2 and headers[1][1:] == expected, headers
  assert "study" in proc.stderr  # the tqdm progress bar


def test_parse_args_defaults_and_errors(capsys):
  config, out = study.parse_args([])
  assert config.sparsities == (0.5, 0.7, 0.8, 0.9, 0.95) and config.seeds == 1
  assert config.model == "mlp" and config.dataset == "mnist1d" and str(out) == "results"
  assert set(config.methods) == {m.name for m in study.METHODS.values() if m.default}
  quick, _ = study.parse_args(["--quick", "--methods", "magnitude,random", "--seeds", "2"])
  assert quick.methods == ("magnitude", "random") and quick.seeds == 2
  assert study.parse_args(["--quick"])[0].methods == study.QUICK_METHODS
  assert quick.steps < config.steps and quick.sparsities == (0.5, 0.9)
  assert study.parse_args(["--methods", "all"])[0].methods == tuple(study.METHODS)
  for bad in (["--methods", "magnitude,nope"], ["--sparsities", "0.5,90"],
              ["--sparsities", "a"], ["--seeds", "0"], ["--per-layer", "nope"]):
    with pytest.raises(SystemExit):
      study.parse_args(bad)
  assert "nope" in capsys.readouterr().err


def test_registry_validates():
  with pytest.raises(ValueError, match="kind"):
    study.register(study.Method("x", "", kind="other", score=lambda c, p, k: p))
  with pytest.raises(ValueError, match="needs score"):
    study.register(study.Method("x", ""))
  with pytest.raises(ValueError, match="select"):
    study.register(study.Method("x", "", select="rows", score=lambda c, p, k: p))
  assert "x" not in study.METHODS


def _fake_results(seeds=2):
  rows = []
  for seed in range(seeds):
    for method, kind in (("magnitude", "one-shot"), ("gmp", "training")):
      for s in (0.5, 0.9):
        acc = 0.8 - s / 2 + 0.01 * seed
        rows.append({"method": method, "kind": kind, "sparsity": s, "seed": seed,
                     "one_shot": None if kind == "training" else {"accuracy": acc - 0.1,
                                                                  "loss": 1.0},
                     "final": {"accuracy": acc, "loss": 0.5}, "measured_sparsity": s})
  config = dict(dataclasses.asdict(study.StudyConfig()), seeds=seeds, sparsities=[0.5, 0.9])
  return {"config": config, "dense": [{"seed": i, "accuracy": 0.8, "loss": 0.4}
                                      for i in range(seeds)],
          "results": rows, "per_layer": None,
          "seconds": 1.0, "cpu_seconds": 1.0}


def test_aggregate_table_report_and_plot(tmp_path):
  results = _fake_results()
  agg = study.aggregate(results)
  acc, std, loss = agg[("magnitude", 0.9)]["final"]
  assert acc == pytest.approx(0.355) and std == pytest.approx(0.005) and loss == 0.5
  assert agg[("gmp", 0.5)]["one_shot"] is None
  table = study.format_table(results, "one_shot").splitlines()
  assert table[0].split() == ["sparsity", "magnitude"]  # training methods have no one-shot
  assert table[2].split()[:2] == ["90%", "25.5±0.5"]
  final = study.format_table(results, "final")
  assert "gmp" in final and "55.5±0.5 / 0.500" in final
  text = study.report(results)
  assert "run time" in text and "skipped" not in text
  json_path, png_path = study.save(results, tmp_path / "r")
  assert json.loads(json_path.read_text())["results"][0]["method"] == "magnitude"
  assert png_path.stat().st_size > 1000


def test_load_dataset_offline_standardised(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  state = np.random.get_state()[1].copy()
  data = common.load_dataset("mnist1d", num_samples=200)
  assert not list(tmp_path.iterdir())  # generated in memory, not downloaded or cached
  assert np.array_equal(np.random.get_state()[1], state)  # numpy's global RNG left alone
  assert data.x_train.shape == (160, 40) and data.x_test.shape == (40, 40)
  assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
  np.testing.assert_allclose(data.x_train.mean(0), 0.0, atol=1e-4)
  digits = common.load_dataset("digits")
  assert digits.x_train.shape[1] == 64 and digits.shape == (8, 8) and digits.num_classes == 10
  assert len(digits.x_train) + len(digits.x_test) == 1797
  assert np.all(np.isfinite(digits.x_train))  # constant border pixels do not divide by 0
  with pytest.raises(ValueError, match="dataset must be one of"):
    common.load_dataset("cifar")
  with pytest.raises(ValueError, match="num_samples"):
    common.load_dataset("mnist1d", num_samples=5)


def test_patch_conv_equals_lax_conv():
  for shape, size, stride in [((7,), 5, 2), ((7, 6), 3, 2)]:  # uneven SAME padding
    dims = len(shape)
    x = jax.random.normal(jax.random.key(0), (3, *shape, 4))
    conv = common.Conv(6, size, stride, dims)
    variables = jax.jit(conv.init)(jax.random.key(1), x)
    numbers = ("NWC", "WIO", "NWC") if dims == 1 else ("NHWC", "HWIO", "NHWC")
    expected = jax.jit(lambda v, x: jax.lax.conv_general_dilated(
        x, v["params"]["kernel"], (stride,) * dims, "SAME",
        dimension_numbers=numbers) + v["params"]["bias"])(variables, x)
    np.testing.assert_allclose(jax.jit(conv.apply)(variables, x), expected, atol=1e-5)


def test_models_and_masked_trainer_keep_zeros():
  data = common.load_dataset("digits")
  for name in common.MODELS:
    model = common.make_model(name, data, width=16)
    variables = jax.eval_shape(model.init, jax.random.key(0), data.x_test[:2])
    assert jax.eval_shape(model.apply, variables, data.x_test[:2]).shape == (2, 10)
  with pytest.raises(ValueError, match="model must be one of"):
    common.make_model("resnet", data)
  model = common.make_model("mlp", data, width=16)
  params = common.init_params(model, data, jax.random.key(0))
  import jaxprune
  masks = jax.jit(lambda p: jaxprune.masks.topk(jaxprune.scores.magnitude(p), 0.5))(params)
  loss_fn = common.make_loss(model)
  tx = optax.adamw(1e-2)
  run = common.make_trainer(loss_fn, tx, batch_size=32, steps=50)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  pruned = jax.jit(jaxprune.apply_masks)(params, masks)
  new, _, losses = run(pruned, tx.init(pruned), jax.random.key(1), x, y, masks)
  assert common.pruned_are_zero(new, masks) and not common.pruned_are_zero(params, masks)
  assert losses.shape == (50,) and float(losses[-10:].mean()) < float(losses[:10].mean())
  factory = common.make_trainer(loss_fn, lambda lr: optax.sgd(lr), batch_size=8, steps=3)
  same, _, _ = factory(params, None, jax.random.key(2), x, y, hyper=jnp.float32(0.0))
  assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(same),
                                                   jax.tree.leaves(params)))
  with pytest.raises(ValueError, match="steps and batch_size"):
    common.make_trainer(loss_fn, tx, steps=0)
  with pytest.raises(TypeError, match="GradientTransformation"):
    common.make_trainer(loss_fn, "adam")


def test_sharded_example_counts_collectives():
  import sharded_global
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("model",))
  x = jax.device_put(jnp.ones((64, 8)), NamedSharding(mesh, P("model")))
  hlo = jax.jit(lambda v: jnp.sort(v.ravel())).lower(x).compile().as_text()
  assert sharded_global.collectives(hlo)["all-gather"] >= 1  # the check would catch a gather
  assert sharded_global.leaf_spec(np.zeros((40, 128)), 8) == P(None, "model")
  assert sharded_global.leaf_spec(np.zeros((10,)), 8) == P()
