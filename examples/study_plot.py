"""The study's figure: accuracy vs sparsity per family, accuracy vs FLOPs/latency (structured)."""

from __future__ import annotations

import numpy as np

from study_report import grouped, dense_stats, table_of


def plot(results, path) -> None:
  """Accuracy vs sparsity per family; accuracy vs FLOPs and latency for structured removal.

  Uses matplotlib's object API (no ``pyplot``): the backend is left alone, nothing stays open.
  """
  from matplotlib.figure import Figure

  fig = Figure(figsize=(13, 8))
  axes = fig.subplots(2, 2).ravel()
  dense, _ = dense_stats(results)
  for ax, family in zip(axes, ("one-shot", "training")):
    for fam in ((family,) if family == "one-shot" else ("training", "regularization")):
      table = table_of([r for r in results["results"] if r["family"] == fam], "method")
      for method in dict.fromkeys(m for m, _ in table):
        points = sorted((s, v) for (m, s), v in table.items() if m == method)
        ax.errorbar([100 * s for s, _ in points], [100 * v[0] for _, v in points],
                    yerr=[100 * v[1] for _, v in points], marker="o", ms=3, capsize=2,
                    label=method, ls="-" if fam != "regularization" else "--")
    ax.set_title(f"{family}{' + regularisation' if family == 'training' else ''} "
                 "(after fine-tuning / training)")
    ax.set_xlabel("sparsity of the kernels (%)")
  structured = [r for r in results["structured"] if r["removal"] != "dense"]
  for ax, key, label in ((axes[2], "flops_ratio", "fewer FLOPs (x)"),
                         (axes[3], "speedup", "CPU speed-up (x)")):
    for name, runs in grouped(structured, "removal").items():
      points = sorted((np.mean([r[key] for r in g]), np.mean([r["final"]["accuracy"]
                                                              for r in g]))
                      for g in grouped(runs, "fraction").values())
      ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=name)
    ax.set_xlabel(label)
    ax.set_title(f"structured removal: accuracy vs {label.split(' (')[0]}")
  for ax in axes:
    ax.axhline(100 * dense, color="k", ls=":", lw=1, label="dense")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
  c = results["config"]
  fig.suptitle(f"jaxprune study: {c['model']} on {c['dataset']}, {c['seeds']} seed(s)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
