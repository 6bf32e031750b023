"""Smoke test of examples/multihost.py: the same script on 2 local processes (one 4-device mesh)."""

import pytest

from test_examples import run_example


@pytest.mark.slow  # two JAX processes start and compile one training step
def test_multihost_example_on_two_processes(tmp_path):
  out = run_example("multihost.py", "--processes", "2", "--steps", "8", "--timeout", "300",
                    "--checkpoint", str(tmp_path / "ckpt"), cwd=tmp_path)
  assert "2 process(es), 4 devices" in out
  assert out.count("kernel sharding:") == 1  # printed by process 0 only
  assert "identical: True" in out and "sparsity 0.800" in out
  assert (tmp_path / "ckpt" / "final" / "jaxprune_checkpoint.json").is_file()
