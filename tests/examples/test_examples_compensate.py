"""Smoke test of examples/one_shot_compensate.py: compensation must not hurt, zeros stay 0."""

from test_examples import run_example, sparsity_total


def test_one_shot_compensate_example(tmp_path):
  out = run_example("one_shot_compensate.py", "--cg-steps", "20", "--calib", "256", cwd=tmp_path)
  rows = {}
  for line in out.splitlines():
    if line.startswith(("magnitude + compensate", "magnitude ", "dense ")):
      name, acc = line[:24].strip(), float(line[24:].split()[0].rstrip("%"))
      rows[name] = acc
  assert set(rows) == {"dense", "magnitude", "magnitude + compensate"}, out
  assert rows["magnitude + compensate"] >= rows["magnitude"] - 1.0, out
  assert sparsity_total(out) == 0.8
  assert "pruned weights exactly 0 after compensation: True" in out
