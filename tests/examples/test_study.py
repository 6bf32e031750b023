"""The pruning study (examples/study*.py) and the shared example code (examples/common.py).

One end-to-end run of the study with --quick in a subprocess (every family); a tiny in-process
run twice for reproducibility; the report on hand-made results; the rest small.
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

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import common  # noqa: E402
import study  # noqa: E402
import study_methods  # noqa: E402
import study_report  # noqa: E402


def test_study_quick_end_to_end_every_family(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, str(EXAMPLES / "study.py"), "--quick", "--sparsities", "0.8", "--out",
       "out"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written
  out = tmp_path / "out"
  assert sorted(p.name for p in out.iterdir()) == ["study.json", "study.md", "study.png"]
  assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  results = json.loads((out / "study.json").read_text())
  expected = [m.name for m in study.METHODS.values() if m.default]
  assert [r["method"] for r in results["results"]] == expected
  assert {r["family"] for r in results["results"]} == set(study_methods.FAMILIES)
  for r in results["results"]:
    assert r["sparsity"] == 0.8
    assert r["measured_sparsity"] == pytest.approx(0.8, abs=2e-3), r
    assert 0.0 <= r["final"]["accuracy"] <= 1.0 and np.isfinite(r["final"]["loss"])
    assert (r["one_shot"] is None) == (r["family"] != "one-shot")
  assert len(results["dense"]) == 1 and results["dense"][0]["accuracy"] > 0.15
  removals = [r["removal"] for r in results["structured"]]
  assert removals[0] == "dense" and {"l2 norm", "taylor", "group lasso zeros"} <= set(removals)
  for r in results["structured"][1:]:
    assert r["params"] <= results["structured"][0]["params"] and r["flops"] > 0
  cut = [r for r in results["structured"] if r["removal"] == "l2 norm"][0]
  assert cut["flops_ratio"] > 1.5 and cut["fraction"] == 0.5
  bits = {r["model"].split()[-1]: r for r in results["quantized"] if r["sparsity"]}
  assert set(bits) == {"float32", "int8", "int4"}
  assert bits["int4"]["bytes"] < bits["int8"]["bytes"] < bits["float32"]["bytes"]
  for key in ("jax", "optax", "flax", "python"):
    assert results["versions"][key]
  assert results["config"]["model"] == "cnn" and results["seconds"] > 0
  report = (out / "study.md").read_text()
  assert "## Checks" in report and "Pruning during training" in report
  assert report.split("\n", 2)[2] == study_report.markdown(results)
  assert "### Checks" in proc.stdout and "wrote " in proc.stdout
  assert "study" in proc.stderr  # the tqdm progress bar


def _tiny_config(**changes):
  config, _ = study.parse_args(["--model", "mlp", "--quick", "--steps", "40", "--finetune",
                                "10", "--methods", "magnitude,gmp",
                                "--sparsities", "0.5,0.9", "--channels", "0.5",
                                "--calib", "64"])
  return dataclasses.replace(config, width=32, num_samples=400, **changes)


def test_run_study_twice_gives_the_same_numbers():
  config = _tiny_config()
  first = study.run_study(config, progress=False)
  second = study.run_study(config, progress=False)
  a, b = study_report.without_timings(first), study_report.without_timings(second)
  assert "seconds" not in json.dumps(a) and "latency_ms" not in json.dumps(a)
  assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                    default=str)
  assert len(first["results"]) == 2 * 2 and first["per_layer"] is None  # global_* not run
  assert first["structured"] and first["quantized"]


def test_parse_args_defaults_and_errors(capsys):
  config, out = study.parse_args([])
  assert config.model == "cnn" and config.dataset == "mnist1d" and str(out) == "results"
  assert config.seeds == 3 and config.sparsities == study.DEFAULT_SPARSITIES
  assert {0.5, 0.7, 0.8, 0.9} <= set(config.sparsities)  # the checks
  assert config.steps == study.MODEL_DEFAULTS["cnn"]["steps"] == study.StudyConfig().steps
  assert set(config.methods) == {m.name for m in study.METHODS.values() if m.default}
  assert study.parse_args(["--model", "mlp"])[0].lr == study.MODEL_DEFAULTS["mlp"]["lr"]
  quick, _ = study.parse_args(["--quick", "--methods", "magnitude,random", "--seeds", "2"])
  assert quick.methods == ("magnitude", "random") and quick.seeds == 2
  assert quick.steps < config.steps and quick.sparsities == (0.5, 0.9)
  assert study.parse_args(["--methods", "all"])[0].methods == tuple(study.METHODS)
  assert study.parse_args(["--sparsities", "0.9,0.5,0.9"])[0].sparsities == (0.5, 0.9)
  for bad in (["--methods", "magnitude,nope"], ["--sparsities", "0.5,90"],
              ["--sparsities", "a"], ["--seeds", "0"], ["--per-layer", "nope"],
              ["--l1", "-1"], ["--channels", "1.5"]):
    with pytest.raises(SystemExit):
      study.parse_args(bad)
  assert "nope" in capsys.readouterr().err


def test_registry_validates():
  Method, register = study_methods.Method, study_methods.register
  with pytest.raises(ValueError, match="family must be one of"):
    register(Method("x", "other", "", score=lambda c, p, k: p))
  with pytest.raises(ValueError, match="needs score"):
    register(Method("x", "one-shot", ""))
  with pytest.raises(ValueError, match="needs run"):
    register(Method("x", "training", ""))
  with pytest.raises(ValueError, match="select"):
    register(Method("x", "one-shot", "", select="rows", score=lambda c, p, k: p))
  assert "x" not in study.METHODS
  families = {m.family for m in study.METHODS.values() if m.default}
  assert families == set(study_methods.FAMILIES)
  assert all(m.reference and m.description for m in study.METHODS.values())


def _fake_results(seeds=2):
  methods = {"magnitude": "one-shot", "obd_fisher": "one-shot", "compensate": "one-shot",
             "gmp": "training", "l1": "regularization"}
  rows = []
  for seed in range(seeds):
    for method, family in methods.items():
      for s in (0.5, 0.9):
        acc = 0.9 - s / 2 + 0.01 * seed + 0.02 * (method == "obd_fisher")
        extra = ({"reached_sparsity": 0.4, "channels_zeroed": 3}
                 if family == "regularization" else {})
        rows.append({"method": method, "family": family, "sparsity": s, "seed": seed,
                     "one_shot": None if family != "one-shot" else {"accuracy": acc - 0.1,
                                                                    "loss": 1.0},
                     "final": {"accuracy": acc, "loss": 0.5}, "measured_sparsity": s,
                     "seconds": 1.0 + seed, **extra})
  structured = [{"seed": seed, "removal": name, "fraction": f, "channels_cut": f,
                 "params": 100 - 50 * f,
                 "flops": 1000 * (1 - f) ** 2, "flops_ratio": 1 / (1 - f) ** 2,
                 "latency_ms": 1.0 - f / 2, "speedup": 1 / (1 - f / 2),
                 "pruned": None if name == "dense" else {"accuracy": 0.5, "loss": 1.0},
                 "final": {"accuracy": 0.9 - 0.02 * f, "loss": 0.4}}
                for seed in range(seeds) for name, f in (("dense", 0.0), ("l2 norm", 0.5))]
  quantized = [{"seed": seed, "model": name, "bits": bits, "sparsity": s, "bytes": b,
                "size_ratio": b / 1000, "final": {"accuracy": 0.8, "loss": 0.5}}
               for seed in range(seeds) for name, bits, s, b in (
                   ("dense float32", 32, 0.0, 1000), ("obd_fisher float32", 32, 0.9, 300),
                   ("obd_fisher int8", 8, 0.9, 90))]
  config = dict(dataclasses.asdict(study.StudyConfig()), seeds=seeds, sparsities=[0.5, 0.9])
  return {"config": config,
          "methods": {m: {"family": f, "description": m, "reference": f"ref {m}"}
                      for m, f in methods.items()},
          "versions": {"python": "3", "jax": "0.x", "optax": "0.y", "flax": "0.z",
                       "jaxprune_commit": "abc"},
          "machine": {"cpus": 2, "backend": "cpu", "platform": "x", "load": [0.5, 0, 0],
                      "load_after": [1.5, 0, 0]},
          "dense": [{"seed": i, "accuracy": 0.91, "loss": 0.4, "seconds": 1.0}
                    for i in range(seeds)],
          "results": rows, "structured": structured, "quantized": quantized,
          "per_layer": None, "seconds": 12.0, "cpu_seconds": 20.0}


def test_report_tables_checks_and_files(tmp_path):
  results = _fake_results()
  table = study_report.table_of(results["results"], "method")
  mean, std = table[("magnitude", 0.9)]
  assert mean == pytest.approx(0.455) and std == pytest.approx(0.005)
  assert study_report.best_method(results["results"], 0.9) == "obd_fisher"
  assert study_report.best_method(results["results"], 0.7) is None
  checks = {target: (got, ok) for target, got, ok in study_report.checks(results)}
  assert checks["dense test accuracy >= 90%"] == ("91.0%", True)
  assert checks["GMP at 90% within 1 point of dense"][1] is False  # 45.5% vs 91%
  assert checks["compensate one-shot at 80% within 5 points of dense"] == ("not run", None)
  assert checks["Fisher-OBD >= magnitude one-shot at 50-70%"][1] is True
  structured = checks["structured: 2x fewer FLOPs within 1 point after fine-tuning"]
  assert structured == ("l2 norm (50% of channels): 4.00x, 89.0%", False)
  md = study_report.markdown(results)
  assert "| `magnitude` | 65.5 ± 0.5 | 45.5 ± 0.5 | ref magnitude |" in md
  assert "| `l1` | 0.0003 | 40.0% | 3.0 |" in md and "**no**" in md and "not run" in md
  assert "obd_fisher int8 | 90% | 80.0 ± 0.0 | 90 | 9.0%" in md
  assert "jax 0.x" in md and "load 0.5 → 1.5" in md
  assert any(line.startswith("**one-shot**") and "`obd_fisher`" in line
             for line in study_report.verdicts(results))
  paths = study_report.save(results, tmp_path / "r")
  assert [p.name for p in paths] == ["study.json", "study.md", "study.png"]
  assert json.loads(paths[0].read_text()) == json.loads(json.dumps(results))
  assert paths[2].stat().st_size > 10_000
  same = study_report.without_timings(dict(results, seconds=99.0, machine={}))
  assert same == study_report.without_timings(results)
  assert "seconds" not in json.dumps(same)


def test_readme_block_is_regenerated_not_typed(tmp_path):
  results = _fake_results()
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{study_report.BEGIN}\nold table\n{study_report.END}\noutro\n")
  study_report.update_readme(results, readme)
  text = readme.read_text()
  assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
  assert "do not edit by hand" in text and "#### Checks" in text
  assert "python examples/study.py --seeds 2" in text
  study_report.update_readme(results, readme)
  assert readme.read_text() == text  # idempotent
  readme.write_text("no markers")
  with pytest.raises(ValueError, match="block to replace"):
    study_report.update_readme(results, readme)


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
