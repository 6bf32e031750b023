"""The study's report: tables, checks against the targets, ``study.{json,md,png}``, README tables.

    python examples/study_report.py                  # print the report of results/study.json
    python examples/study_report.py --readme         # rewrite README.md's study tables from it

Every number comes from ``study.json`` as ``examples/study.py`` wrote it: nothing is typed by
hand. The README's block between ``<!-- study:begin -->`` and ``<!-- study:end -->`` is replaced.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
# Fields that differ between two runs of the same command (times, latencies, load): everything
# else in study.json is reproducible on one machine.
TIMING_KEYS = ("seconds", "cpu_seconds", "latency_ms", "speedup", "machine")


# --------------------------------------------------------------------------------------------
# Facts about the run.


def versions() -> dict:
  """Versions of Python and the packages the numbers depend on, and the git commit."""
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "optax", "flax", "orbax-checkpoint", "numpy", "mnist1d"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  try:
    out["jaxprune_commit"] = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
        text=True, timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    out["jaxprune_commit"] = None
  return out


def machine() -> dict:
  import jax
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  return {"cpus": os.cpu_count(), "backend": jax.default_backend(),
          "platform": platform.platform(), "load": [round(v, 2) for v in load]}


def without_timings(tree):
  """``tree`` with every :data:`TIMING_KEYS` field removed (for reproducibility checks)."""
  if isinstance(tree, dict):
    return {k: without_timings(v) for k, v in tree.items() if k not in TIMING_KEYS}
  if isinstance(tree, list):
    return [without_timings(v) for v in tree]
  return tree


# --------------------------------------------------------------------------------------------
# Aggregation.


def _stats(values):
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std())


def table_of(rows, key, phase="final"):
  """``{(key value, sparsity): (mean acc, std acc)}`` over seeds."""
  groups: dict = {}
  for r in rows:
    if r.get(phase) is not None:
      groups.setdefault((r[key], r["sparsity"]), []).append(r[phase]["accuracy"])
  return {k: _stats(v) for k, v in groups.items()}


def best_method(records, sparsity):
  """The method with the best mean final accuracy at ``sparsity`` (None if none ran)."""
  acc = {m: a for (m, s), (a, _) in table_of(records, "method").items() if s == sparsity}
  return max(acc, key=lambda m: (acc[m], m)) if acc else None


def dense_stats(results):
  return _stats([d["accuracy"] for d in results["dense"]])


def grouped(rows, key):
  out: dict = {}
  for r in rows:
    out.setdefault(r[key], []).append(r)
  return out


def structured_runs(results, dense=True) -> dict:
  """``{(removal, fraction): [row per seed]}`` of the structured removals, in run order."""
  rows = [r for r in results["structured"] if dense or r["removal"] != "dense"]
  return grouped([dict(r, key=(r["removal"], r["fraction"])) for r in rows], "key")


# --------------------------------------------------------------------------------------------
# Checks against the targets.


def checks(results) -> list[tuple[str, str, bool | None]]:
  """``[(target, what was measured, met?)]``; ``None`` where the study did not run it."""
  dense, _ = dense_stats(results)
  final = table_of(results["results"], "method")
  one_shot = table_of(results["results"], "method", "one_shot")

  def get(table, method, s):
    return table.get((method, s), (None, None))[0]

  out = [("dense test accuracy >= 90%", f"{100 * dense:.1f}%", dense >= 0.9)]
  gmp = get(final, "gmp", 0.9)
  out.append(("GMP at 90% within 1 point of dense",
              "not run" if gmp is None else f"{100 * gmp:.1f}% vs {100 * dense:.1f}%",
              None if gmp is None else gmp >= dense - 0.01))
  comp = get(one_shot, "compensate", 0.8)
  out.append(("compensate one-shot at 80% within 5 points of dense",
              "not run" if comp is None else f"{100 * comp:.1f}% (no fine-tuning)",
              None if comp is None else comp >= dense - 0.05))
  pairs = [(s, get(one_shot, "obd_fisher", s), get(one_shot, "magnitude", s))
           for s in (0.5, 0.7)]
  pairs = [p for p in pairs if p[1] is not None and p[2] is not None]
  out.append(("Fisher-OBD >= magnitude one-shot at 50-70%",
              ", ".join(f"{s:.0%}: {100 * o:.1f}% vs {100 * m:.1f}%" for s, o, m in pairs)
              or "not run", all(o >= m for _, o, m in pairs) if pairs else None))
  rows = [r for r in results["structured"] if r["removal"] != "dense"]
  best = None
  for name, group in grouped(rows, "removal").items():
    for runs in grouped(group, "fraction").values():
      ratio, acc = np.mean([r["flops_ratio"] for r in runs]), np.mean(
          [r["final"]["accuracy"] for r in runs])
      if ratio >= 2.0 and (best is None or acc > best[2]):
        best = (name, ratio, acc, np.mean([r["channels_cut"] for r in runs]))
  out.append(("structured: 2x fewer FLOPs within 1 point after fine-tuning",
              "no removal reached 2x" if best is None else
              f"{best[0]} ({best[3]:.0%} of channels): {best[1]:.2f}x, {100 * best[2]:.1f}%",
              None if best is None else best[2] >= dense - 0.01))
  return out


def verdicts(results) -> list[str]:
  """One sentence per family: what wins here, read off the numbers."""
  final = table_of(results["results"], "method")
  sparsities = results["config"]["sparsities"]
  top = max(sparsities)
  dense, _ = dense_stats(results)
  lines = []
  for family in ("one-shot", "training", "regularization"):
    names = [m for m, v in results["methods"].items() if v["family"] == family]
    at = {m: final[(m, s)][0] for m in names for s in [top] if (m, s) in final}
    at90 = {m: final[(m, 0.9)][0] for m in names if (m, 0.9) in final}
    if not at:
      continue
    best, worst = max(at, key=at.get), min(at, key=at.get)
    text = (f"**{family}**: at {top:.0%} sparsity the best after fine-tuning is `{best}` "
            f"({100 * at[best]:.1f}%), the worst `{worst}` ({100 * at[worst]:.1f}%)")
    if at90 and top != 0.9:
      b90 = max(at90, key=at90.get)
      text += f"; at 90% `{b90}` ({100 * at90[b90]:.1f}%)"
    if family == "one-shot":
      raw = table_of(results["results"], "method", "one_shot")
      mid = sorted(sparsities)[len(sparsities) // 2]
      now = {m: raw[(m, mid)][0] for m in names if (m, mid) in raw}
      if now:
        b = max(now, key=now.get)
        text += (f"; right after pruning (no fine-tuning) at {mid:.0%} the best is `{b}` "
                 f"({100 * now[b]:.1f}%)")
    lines.append(text + f"; dense {100 * dense:.1f}%.")
  groups = structured_runs(results, dense=False)
  if groups:
    mean = lambda runs, k: np.mean([r[k] for r in runs])  # noqa: E731
    acc = {k: np.mean([r["final"]["accuracy"] for r in runs]) for k, runs in groups.items()}
    twice = [k for k in groups if mean(groups[k], "flops_ratio") >= 2.0]
    best = max(twice or groups, key=acc.get)
    lines.append(f"**structured**: the best fine-tuned model with "
                 f"{'at least 2x' if twice else 'any'} fewer FLOPs is `{best[0]}` with "
                 f"{mean(groups[best], 'channels_cut'):.0%} of the channels cut "
                 f"({mean(groups[best], 'flops_ratio'):.2f}x fewer FLOPs, "
                 f"{mean(groups[best], 'speedup'):.2f}x faster on this CPU, "
                 f"{100 * acc[best]:.1f}%).")
  q = grouped(results["quantized"], "model")
  if q:
    names = [n for n in q if not n.startswith("dense")]
    if names:
      f32, i8 = names[0], names[1] if len(names) > 1 else names[0]
      a32 = np.mean([r["final"]["accuracy"] for r in q[f32]])
      a8 = np.mean([r["final"]["accuracy"] for r in q[i8]])
      lines.append(f"**quantised**: `{i8}` keeps {100 * a8:.1f}% (float {100 * a32:.1f}%) at "
                   f"{100 * q[i8][0]['size_ratio']:.1f}% of the dense export's bytes.")
  return lines


# --------------------------------------------------------------------------------------------
# Tables (markdown; the text report prints the same tables).


def _cell(stat, seeds):
  if stat is None:
    return "-"
  mean, std = stat
  return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if seeds > 1 else "")


def _md(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def family_table(results, family, phase="final"):
  seeds = results["config"]["seeds"]
  names = [m for m, v in results["methods"].items() if v["family"] == family]
  table = table_of([r for r in results["results"] if r["family"] == family], "method", phase)
  names = [m for m in names if any((m, s) in table for s in results["config"]["sparsities"])]
  if not names:
    return None
  header = ["method"] + [f"{s:.0%}" for s in results["config"]["sparsities"]] + ["published"]
  rows = [[f"`{m}`"] + [_cell(table.get((m, s)), seeds) for s in results["config"][
      "sparsities"]] + [results["methods"][m]["reference"]] for m in names]
  return _md(header, rows)


def regularization_table(results):
  rows = [r for r in results["results"] if r["family"] == "regularization"]
  out = []
  for name, group in grouped(rows, "method").items():
    first = [r for r in group if r["sparsity"] == group[0]["sparsity"]]
    reached = _stats([r["reached_sparsity"] for r in first])
    zeroed = _stats([r["channels_zeroed"] for r in first])
    strength = results["config"]["l1" if name == "l1" else "group_lasso"]
    out.append([f"`{name}`", f"{strength:g}", f"{100 * reached[0]:.1f}%",
                f"{zeroed[0]:.1f}"])
  if not out:
    return None
  return _md(["method", "threshold per step", "sparsity reached (kernels)",
              "channels zeroed"], out)


def structured_table(results):
  rows = results["structured"]
  if not rows:
    return None
  seeds = results["config"]["seeds"]
  out = []
  for (name, _), runs in structured_runs(results).items():
    mean = lambda k: np.mean([r[k] for r in runs])  # noqa: E731
    pruned = [r["pruned"]["accuracy"] for r in runs if r["pruned"] is not None]
    out.append([name, f"{mean('channels_cut'):.0%}", f"{mean('params'):.0f}",
                f"{mean('flops'):.0f}",
                f"{mean('flops_ratio'):.2f}x", f"{mean('latency_ms'):.3f}",
                f"{mean('speedup'):.2f}x",
                "-" if not pruned else _cell(_stats(pruned), seeds),
                _cell(_stats([r["final"]["accuracy"] for r in runs]), seeds)])
  return _md(["removal", "channels cut", "params", "FLOPs / example", "fewer FLOPs",
              f"ms / batch of {results['config']['latency_batch']}", "speed-up",
              "acc. cut", "acc. fine-tuned"], out)


def quantized_table(results):
  rows = results["quantized"]
  if not rows:
    return None
  seeds = results["config"]["seeds"]
  out = [[name, f"{runs[0]['sparsity']:.0%}",
          _cell(_stats([r["final"]["accuracy"] for r in runs]), seeds),
          f"{np.mean([r['bytes'] for r in runs]):.0f}",
          f"{100 * np.mean([r['size_ratio'] for r in runs]):.1f}%"]
         for name, runs in grouped(rows, "model").items()]
  return _md(["model (export.save)", "sparsity", "test acc.", "bytes", "of dense"], out)


def tables(results) -> list[tuple[str, str]]:
  c = results["config"]
  out = [(f"One-shot, then {c['finetune']} fine-tuning steps with the mask kept",
          family_table(results, "one-shot")),
         ("One-shot, right after pruning (no fine-tuning)",
          family_table(results, "one-shot", "one_shot")),
         ("Pruning during training (same total steps)", family_table(results, "training")),
         ("Regularisation, cut to each target and fine-tuned",
          family_table(results, "regularization")),
         ("What the penalties reached by themselves", regularization_table(results)),
         ("Structured: channels physically removed (FLOPs: XLA cost analysis; latency: "
          "median on this CPU)", structured_table(results)),
         (f"Quantised: the best pruned model at {c['quantize_at']:.0%} "
          "(per-channel scales from kept weights)", quantized_table(results))]
  return [(title, t) for title, t in out if t]


def header(results) -> str:
  c, v, m = results["config"], results["versions"], results["machine"]
  dense, std = dense_stats(results)
  return (f"{c['model'].upper()} on {c['dataset']}, {c['seeds']} seed(s) (mean ± std), "
          f"{c['steps']} dense steps + {c['finetune']} fine-tuning, batch {c['batch_size']}, "
          f"AdamW lr {c['lr']:g} wd {c['weight_decay']:g}; calibration: {c['calib']} held-out "
          f"training examples. Dense test accuracy {100 * dense:.1f} ± {100 * std:.1f}%. "
          f"Run: {results['seconds']:.0f} s wall on {m['cpus']} CPU cores ({m['backend']}), "
          f"load {m['load'][0]:.1f} → {m['load_after'][0]:.1f}; jax {v['jax']}, optax "
          f"{v['optax']}, flax {v['flax']}, Python {v['python']}, jaxprune "
          f"{v['jaxprune_commit']}. Cells: test accuracy %.")


def markdown(results, level="##") -> str:
  parts = [header(results), "", f"{level} Checks", ""]
  parts.append(_md(["target", "measured", "met"],
                   [[t, got, {True: "yes", False: "**no**", None: "not run"}[ok]]
                    for t, got, ok in checks(results)]))
  parts += ["", f"{level} What wins here", ""] + [f"- {line}" for line in verdicts(results)]
  for title, table in tables(results):
    parts += ["", f"{level} {title}", "", table]
  parts += ["", "Published figures are from the papers' own (larger) settings, quoted for "
            "reading the result, not measured here."]
  return "\n".join(parts) + "\n"


def text(results) -> str:
  """The report for the terminal (the markdown, which reads as plain text too)."""
  return "jaxprune study: " + markdown(results, level="###")


# --------------------------------------------------------------------------------------------
# Files.


def save(results, out) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  paths = out / "study.json", out / "study.md", out / "study.png"
  paths[0].write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
  paths[1].write_text("# jaxprune study\n\n" + markdown(results))
  import study_plot  # matplotlib only when a figure is written

  study_plot.plot(results, paths[2])
  return paths


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if hasattr(x, "tolist"):  # numpy/jax arrays (e.g. per-layer scalars)
    return x.tolist()
  raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def readme_block(results) -> str:
  command = "python examples/study.py" + ("" if results["config"]["seeds"] == 3 else
                                          f" --seeds {results['config']['seeds']}")
  return (f"{BEGIN}\n<!-- generated by `python examples/study_report.py --readme` from "
          f"results/study.json ({command}); do not edit by hand -->\n\n"
          + markdown(results, level="####") + END)


def update_readme(results, readme=ROOT / "README.md") -> None:
  text_ = pathlib.Path(readme).read_text()
  if BEGIN not in text_ or END not in text_:
    raise ValueError(f"{readme} has no {BEGIN} ... {END} block to replace.")
  head, rest = text_.split(BEGIN, 1)
  tail = rest.split(END, 1)[1]
  pathlib.Path(readme).write_text(head + readme_block(results) + tail)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("json", nargs="?", default=str(ROOT / "results" / "study.json"))
  parser.add_argument("--readme", action="store_true", help="rewrite README.md's study block")
  args = parser.parse_args(argv)
  results = json.loads(pathlib.Path(args.json).read_text())
  if args.readme:
    update_readme(results)
    print(f"README.md study tables regenerated from {args.json}")
  else:
    sys.stdout.write(text(results))


if __name__ == "__main__":
  main()
