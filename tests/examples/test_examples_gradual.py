"""Smoke test: examples/gradual_pruning.py runs end to end with tiny settings."""

import importlib.util
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_gradual_pruning_example_quick(tmp_path):
  env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user would run it
  tensorboard = importlib.util.find_spec("tensorboardX") is not None
  extra = ["--logdir", "tb"] if tensorboard else []
  result = subprocess.run(
      [sys.executable, str(ROOT / "examples" / "gradual_pruning.py"), "--quick", "--seed", "1",
       "--plot", "curve.png", *extra], capture_output=True, text=True, env=env, timeout=300,
      cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "dense  test accuracy:" in out and "pruned test accuracy:" in out
  rows = [line.split() for line in out.splitlines() if line.split()
          and line.split()[0].endswith("/kernel")]
  assert len(rows) == 3, out
  for path, *_, size, zeros, _ in rows:  # every kernel has exactly round(0.9 n) zeros
    assert int(zeros) == round(0.9 * int(size)), (path, size, zeros)
  curve = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
  assert curve and curve[0][1] == "0.0%" and curve[-1][1] == "90.0%", out  # sparsity ramps up
  assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
  if tensorboard:
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"pruned/sparsity/total" in events[0].read_bytes()
