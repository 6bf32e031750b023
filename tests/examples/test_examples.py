"""Smoke tests of the per-library examples: each script runs as a user runs it, with --quick.

Every script runs in a subprocess from an empty working directory (nothing may be downloaded or
written there), without the test suite's XLA_FLAGS (the sharded example sets its own).
"""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def run_example(script: str, *args: str, cwd) -> str:
  """Runs ``examples/<script> --quick *args`` and returns its stdout; fails on a non-zero exit."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, (
      f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc.stdout


def accuracies(stdout: str) -> dict[str, float]:
  """``{"dense": 41.0, "one-shot": ..., "fine-tuned": ...}`` from an example's result lines."""
  out = {}
  for line in stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[0] in ("dense", "one-shot", "fine-tuned"):
      out[parts[0]] = float(parts[1].rstrip("%"))
  return out


def sparsity_total(stdout: str) -> float:
  """The ``total`` row of ``jaxprune.summary.table`` in an example's output, as a fraction."""
  rows = [line.split() for line in stdout.splitlines() if line.startswith("total ")]
  assert rows, stdout
  return float(rows[-1][-1].rstrip("%")) / 100


@pytest.mark.parametrize("script", ["flax_linen.py", "flax_nnx.py", "equinox_example.py"])
def test_library_example_prunes_and_fine_tunes(script, tmp_path):
  stdout = run_example(script, cwd=tmp_path)
  acc = accuracies(stdout)
  assert set(acc) == {"dense", "one-shot", "fine-tuned"}, stdout
  assert all(0.0 <= v <= 100.0 for v in acc.values())
  assert acc["dense"] > 15.0, stdout  # better than chance (10%) even with the tiny settings
  assert sparsity_total(stdout) == pytest.approx(0.9, abs=2e-3)
  assert "still exactly 0 after" in stdout and stdout.rstrip().endswith("True"), stdout
  assert not list(tmp_path.iterdir())  # nothing downloaded or written


def test_sharded_global_pruning_has_no_all_gather(tmp_path):
  stdout = run_example("sharded_global.py", cwd=tmp_path)
  assert stdout.startswith("8 CPU devices"), stdout
  assert "masks sharded like the params: True" in stdout, stdout
  assert "all-gather in the compiled HLO: no" in stdout, stdout
  assert "all-gather 0" in stdout and "all-reduce" in stdout
  assert sparsity_total(stdout) == pytest.approx(0.9, abs=1e-4)  # global: exact over kernels
  assert not list(tmp_path.iterdir())


def test_examples_reject_bad_arguments(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, str(EXAMPLES / "flax_linen.py"), "--sparsity", "90"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "--sparsity must be in [0, 1)" in proc.stderr
