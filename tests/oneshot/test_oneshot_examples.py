"""Smoke tests of the LM examples (``--quick``: a tiny model trained in seconds)."""

import math
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent.parent / "examples"


def _run(script, *args, cwd):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{script}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.mark.slow
def test_train_lm_quick_saves_a_loadable_checkpoint(tmp_path):
  out = _run("train_lm.py", "--out", str(tmp_path / "ckpt"), cwd=tmp_path)
  assert "validation perplexity" in out
  assert (tmp_path / "ckpt" / "params.npz").is_file()
  sys.path.insert(0, str(EXAMPLES))
  try:
    import lm  # noqa: PLC0415
    model, params = lm.load(tmp_path / "ckpt")
  finally:
    sys.path.remove(str(EXAMPLES))
  assert model.cfg.layers == 2 and params["block0"]["query"]["kernel"].shape == (64, 64)


@pytest.mark.slow
def test_prune_lm_quick_table(tmp_path):
  out = _run("prune_lm.py", cwd=tmp_path)
  rows = {}
  for line in out.splitlines()[-4:]:
    parts = line.split()
    rows[" ".join(parts[:-4])] = (float(parts[-4]), float(parts[-1]))
  assert set(rows) == {"dense", "wanda 50%", "sparsegpt+OWL 50%", "sparsegpt 2:4"}, out
  for label, (ppl, sparsity) in rows.items():
    assert math.isfinite(ppl) and ppl < 256
    assert sparsity == (0.0 if label == "dense" else 0.5)
  assert not list(tmp_path.iterdir())  # nothing written to the working directory
