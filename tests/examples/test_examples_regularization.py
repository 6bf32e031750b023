"""Smoke test of examples/regularization.py: every method reaches the target sparsity."""

from test_examples import run_example


def test_regularization_example(tmp_path):
  out = run_example("regularization.py", "--steps", "150", "--finetune", "30", cwd=tmp_path)
  rows = {}
  for line in out.splitlines():
    for name in ("dense", "L1", "group lasso (neurons)", "GMP (prune, polynomial)",
                 "RigL (uniform)"):
      if line.startswith(name + " "):
        rows[name] = [float(v.rstrip("%")) for v in line[26:].split() if v.endswith("%")]
  assert set(rows) == {"dense", "L1", "group lasso (neurons)", "GMP (prune, polynomial)",
                       "RigL (uniform)"}, out
  for name, values in rows.items():
    if name != "dense":
      assert values[2] >= 89.8, (name, out)  # at least the target (exactly it after a cut)
    assert all(0.0 <= v <= 100.0 for v in values)
  assert not list(tmp_path.iterdir())
