"""Smoke test of examples/structured_pruning.py --quick (seconds on an idle machine)."""

import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "examples" / "structured_pruning.py"


@pytest.mark.slow
def test_structured_pruning_example_quick(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
          if line.split() and line.split()[0] in ("dense", "l2", "taylor")}
  assert set(rows) == {"dense", "l2", "taylor"}
  dense_params, small_params = int(rows["dense"][1]), int(rows["l2"][1])
  assert small_params < dense_params / 2  # physically smaller
  assert float(rows["l2"][3].rstrip("x")) > 1.9  # >= 1.9x fewer FLOPs at 50% channels
  assert list(tmp_path.iterdir()) == []  # nothing written
