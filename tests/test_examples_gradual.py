"""Smoke test: examples/gradual_pruning.py runs end to end with tiny settings."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gradual_pruning_example_quick():
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user would run it
  result = subprocess.run(
      [sys.executable, str(ROOT / "examples" / "gradual_pruning.py"), "--quick", "--seed", "1"],
      capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "dense  test accuracy:" in out and "pruned test accuracy:" in out
  rows = [line.split() for line in out.splitlines() if line.startswith("Dense_")]
  assert len(rows) == 3, out
  for path, *_, size, zeros, _ in rows:  # every kernel has exactly round(0.9 n) zeros
    assert int(zeros) == round(0.9 * int(size)), (path, size, zeros)
