"""A pruning study: train a small model on MNIST-1D, prune it many ways, compare test accuracy.

    python examples/study.py                      # defaults: MLP on MNIST-1D, a few minutes on CPU
    python examples/study.py --quick              # a smoke test: 3 methods, tiny settings
    python examples/study.py --model cnn --methods magnitude,global_magnitude,gmp --seeds 3

Everything is generated or bundled offline (MNIST-1D by ``mnist1d.data.make_dataset``, digits by
scikit-learn): nothing is downloaded. For each seed one dense model is trained; every one-shot
method prunes that same model at each sparsity (accuracy right after pruning), then the pruned
model is fine-tuned with its mask kept. Training methods (gradual magnitude pruning, RigL) spend
the same number of steps in their own way. Prints a table sparsity x method -> test accuracy and
loss, and writes ``study.json`` and ``study.png`` (accuracy vs sparsity) to ``--out``.

Methods are entries of a registry (:data:`METHODS`); add one with :func:`register`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable

import common  # first: it puts the repository on sys.path when jaxprune is not installed
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
# --quick's methods (unless --methods is given): compilation dominates a smoke test, and these
# cover both kinds, both selections and the per-layer table with the fewest compilations.
QUICK_METHODS = ("magnitude", "global_magnitude", "gmp")


# --------------------------------------------------------------------------------------------
# The method registry.


@dataclasses.dataclass(frozen=True)
class Method:
  """One way of pruning, as the study runs it.

  A *one-shot* method gives ``score(ctx, params, key) -> scores`` (computed once per dense
  model), masks come from ``select`` ("layerwise": ``jaxprune.masks.topk``, "global":
  ``jaxprune.masks.global_topk``) at each sparsity, and ``after(ctx, params, masks) -> params``
  may change the kept weights (e.g. ``jaxprune.compensate``). A *training* method gives
  ``train(ctx, sparsity, key) -> (params, masks)`` and is timed and budgeted separately.

  Attributes:
    name: the name used on the command line and in the table.
    description: one line for ``--help`` and the JSON.
    kind: "one-shot" or "training".
    score, select, after: one-shot parts (see above).
    train: the training part.
    default: part of the default set of methods.
  """
  name: str
  description: str
  kind: str = "one-shot"
  score: Callable | None = None
  select: str = "layerwise"
  after: Callable | None = None
  train: Callable | None = None
  default: bool = True


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds ``method`` to :data:`METHODS` (replacing one of the same name)."""
  if method.kind not in ("one-shot", "training"):
    raise ValueError(f"Method.kind must be 'one-shot' or 'training'; got {method.kind!r}.")
  if method.kind == "one-shot" and method.score is None:
    raise ValueError(f"one-shot method {method.name!r} needs score=.")
  if method.kind == "training" and method.train is None:
    raise ValueError(f"training method {method.name!r} needs train=.")
  if method.select not in ("layerwise", "global"):
    raise ValueError(f"Method.select must be 'layerwise' or 'global'; got {method.select!r}.")
  METHODS[method.name] = method
  return method


@dataclasses.dataclass
class Context:
  """What the methods see: the model, its loss, the data, the settings and the dense params."""
  config: Any
  model: Any
  loss_fn: Callable
  x_train: jax.Array
  y_train: jax.Array
  x_calib: jax.Array
  y_calib: jax.Array
  init_params: Any = None
  dense_params: Any = None
  trainers: dict = dataclasses.field(default_factory=dict)


def _calib_grads(ctx, params):
  return jax.grad(ctx.loss_fn)(params, ctx.x_calib, ctx.y_calib)


def _obd(ctx, params, key):
  # ctx.loss_fn is a jaxprune.scores.ModelLoss (common.make_loss): the GGN is available
  return jaxprune.scores.obd(ctx.loss_fn, params, ctx.x_calib, ctx.y_calib, key=key,
                             probes=ctx.config.probes, method="ggn")


def _compensate(ctx, params, masks):
  return jaxprune.compensate(ctx.loss_fn, params, masks, ctx.x_calib, ctx.y_calib,
                             steps=ctx.config.cg_steps, damping=1e-3)


def _gmp(ctx, sparsity, key):
  """Gradual magnitude pruning (Zhu & Gupta) of the dense model during the fine-tuning budget:
  ``jaxprune.prune`` last in an ``optax.chain``, the cubic schedule
  ``s * (1 - (1 - t / end)**3)`` over the first 75% of the steps, then training with the final
  mask. (``jaxprune.schedules.polynomial`` is that schedule with a static target; the optax one
  takes the target traced, so one compilation serves every sparsity.)"""
  steps = max(ctx.config.finetune, 1)
  end = max(int(0.75 * steps), 1)

  def make_tx(target):
    schedule = optax.polynomial_schedule(0.0, target, power=3, transition_steps=end)
    return optax.chain(ctx.config.optimizer(),
                       jaxprune.prune(sparsity=schedule, every=max(end // 15, 1), end=end))

  if "gmp" not in ctx.trainers:
    ctx.trainers["gmp"] = common.make_trainer(ctx.loss_fn, make_tx,
                                              batch_size=ctx.config.batch_size, steps=steps)
  params, state, _ = ctx.trainers["gmp"](ctx.dense_params, None, key, ctx.x_train, ctx.y_train,
                                         hyper=jnp.float32(sparsity))
  return params, jaxprune.masks_of(state)


def _dynamic(wrapper):
  def train(ctx, sparsity, key):
    """Sparse training from the initial weights for the whole budget (dense + fine-tuning
    steps), ERK allocation, mask updates every ``steps/30`` steps until 75% of training."""
    steps = ctx.config.steps + ctx.config.finetune
    end = max(int(0.75 * steps), 1)
    mask_key, run_key = jax.random.split(key)
    tx = wrapper(ctx.config.optimizer(), sparsity, every=max(end // 30, 1), end=end,
                      key=mask_key)
    run = common.make_trainer(ctx.loss_fn, tx, batch_size=ctx.config.batch_size, steps=steps)
    params, state, _ = run(ctx.init_params, None, run_key, ctx.x_train, ctx.y_train)
    return params, jaxprune.masks_of(state)
  return train


register(Method("magnitude", "|w|, per layer",
                score=lambda ctx, p, k: jaxprune.scores.magnitude(p)))
register(Method("global_magnitude", "|w|, one threshold over all layers", select="global",
                score=lambda ctx, p, k: jaxprune.scores.magnitude(p)))
register(Method("saliency", "|w*g| (first-order Taylor, SNIP), per layer",
                score=lambda ctx, p, k: jaxprune.scores.saliency(p, _calib_grads(ctx, p))))
register(Method("random", "uniform random scores, per layer (baseline)",
                score=lambda ctx, p, k: jaxprune.scores.random(p, k)))
register(Method("obd", "Optimal Brain Damage 1/2*diag(H)*w^2 (Hutchinson on GGN), per layer",
                score=_obd))
register(Method("taylor2", "|-g*w + 1/2*w*(Hw)| (one HVP), per layer",
                score=lambda ctx, p, k: jaxprune.scores.taylor2(ctx.loss_fn, p, ctx.x_calib,
                                                                ctx.y_calib)))
register(Method("magnitude_compensate", "|w| per layer, then jaxprune.compensate (CG on GGN)",
                score=lambda ctx, p, k: jaxprune.scores.magnitude(p), after=_compensate))
register(Method("gmp", "gradual magnitude pruning (jaxprune.prune in optax.chain) while "
                "fine-tuning", kind="training", train=_gmp))
register(Method("rigl", "RigL sparse training from scratch (ERK)", kind="training",
                train=_dynamic(jaxprune.rigl)))
register(Method("set", "SET sparse training from scratch (ERK)", kind="training",
                train=_dynamic(jaxprune.sparse_evolution), default=False))


# --------------------------------------------------------------------------------------------
# Running the study.


@dataclasses.dataclass(frozen=True)
class StudyConfig(common.Config):
  """The shared example settings plus the study's own."""
  methods: tuple[str, ...] = ()
  sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
  seeds: int = 1
  calib: int = 1024
  probes: int = 16
  cg_steps: int = 50
  per_layer: str = "global_magnitude"  # whose masks at the highest sparsity get a layer table


def parse_args(argv=None) -> tuple[StudyConfig, pathlib.Path]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_config_args(parser)
  names = ", ".join(f"{m.name}{'' if m.default else ' (not default)'}" for m in METHODS.values())
  parser.add_argument("--methods", default=None,
                      help=f"comma-separated, or 'all' (default: every default method; "
                      f"--quick: {','.join(QUICK_METHODS)}). Known: {names}")
  parser.add_argument("--sparsities", default=None,
                      help="comma-separated fractions of zeros (default "
                      f"{','.join(map(str, DEFAULT_SPARSITIES))}; --quick: 0.5,0.9)")
  parser.add_argument("--seeds", type=int, default=None,
                      help="number of seeds (one dense model each; default 1)")
  parser.add_argument("--calib", type=int, default=None,
                      help="training examples used by data-based scores and compensate "
                      "(default 1024)")
  parser.add_argument("--probes", type=int, default=None, help="Hutchinson probes for OBD")
  parser.add_argument("--per-layer", default="global_magnitude",
                      help="the one-shot method whose masks at the highest sparsity (first "
                      "seed) are shown per layer (default global_magnitude)")
  parser.add_argument("--out", default="results", help="folder for study.json and study.png")
  args = parser.parse_args(argv)
  base = common.config_from_args(args)
  quick = args.quick
  methods = (QUICK_METHODS if quick and args.methods is None
             else _methods(args.methods, parser))
  sparsities = _sparsities(args.sparsities, parser) if args.sparsities else (
      (0.5, 0.9) if quick else DEFAULT_SPARSITIES)
  config = StudyConfig(
      **dataclasses.asdict(base), methods=methods, sparsities=sparsities,
      seeds=args.seeds if args.seeds is not None else 1,
      calib=args.calib if args.calib is not None else (256 if quick else 1024),
      probes=args.probes if args.probes is not None else (4 if quick else 16),
      cg_steps=10 if quick else 50, per_layer=args.per_layer)
  if config.per_layer not in METHODS:
    parser.error(f"unknown --per-layer {config.per_layer!r}; known: {', '.join(METHODS)}")
  if config.seeds < 1 or config.calib < 1 or config.probes < 1:
    parser.error("--seeds, --calib and --probes must be >= 1")
  return config, pathlib.Path(args.out)


def _methods(text, parser) -> tuple[str, ...]:
  if text is None:
    return tuple(m.name for m in METHODS.values() if m.default)
  if text.strip() == "all":
    return tuple(METHODS)
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  unknown = [n for n in names if n not in METHODS]
  if unknown or not names:
    parser.error(f"unknown --methods {unknown or text!r}; known: {', '.join(METHODS)}")
  return names


def _sparsities(text, parser) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    parser.error(f"--sparsities must be comma-separated numbers; got {text!r}")
  if not values or any(not 0.0 <= v < 1.0 for v in values):
    parser.error(f"--sparsities must be fractions in [0, 1); got {text!r}")
  return tuple(sorted(set(values)))


def make_context(config: StudyConfig):
  data = common.load_dataset(config.dataset, num_samples=config.num_samples, seed=config.seed)
  model = common.make_model(config.model, data, width=config.width)
  loss_fn = common.make_loss(model)
  n = min(config.calib, len(data.x_train))
  ctx = Context(config, model, loss_fn, jnp.asarray(data.x_train), jnp.asarray(data.y_train),
                jnp.asarray(data.x_train[:n]), jnp.asarray(data.y_train[:n]))
  return ctx, data


def run_study(config: StudyConfig, *, progress: bool = True) -> dict:
  """Runs every (seed, method, sparsity) and returns the results as a JSON-able dict."""
  from tqdm.auto import tqdm

  wall, cpu = time.perf_counter(), time.process_time()
  methods = [METHODS[n] for n in config.methods]
  ctx, data = make_context(config)
  evaluate = common.make_evaluate(ctx.model)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  scores_fns = {m.name: jax.jit(lambda p, k, m=m: m.score(ctx, p, k))
                for m in methods if m.kind == "one-shot"}
  after_fns = {m.name: jax.jit(lambda p, masks, m=m: m.after(ctx, p, masks))
               for m in methods if m.after is not None}
  select_fns = {"layerwise": jax.jit(jaxprune.masks.topk),
                "global": jax.jit(jaxprune.masks.global_topk)}
  dense_tx = config.optimizer()
  dense_run = common.make_trainer(ctx.loss_fn, dense_tx, batch_size=config.batch_size,
                                  steps=config.steps)
  finetune_run = (common.make_trainer(ctx.loss_fn, dense_tx, batch_size=config.batch_size,
                                      steps=config.finetune) if config.finetune else None)

  def measure(params):
    loss, acc = evaluate(params, x_test, y_test)
    return {"loss": float(loss), "accuracy": float(acc)}

  jobs = config.seeds * (1 + len(methods) * len(config.sparsities))
  bar = tqdm(total=jobs, desc="study", unit="run", disable=not progress, file=sys.stderr)
  dense, records, per_layer = [], [], None
  for seed in range(config.seeds):
    key = jax.random.key(config.seed * 1000 + seed)
    init_key, train_key, method_key = jax.random.split(key, 3)
    bar.set_postfix_str(f"seed {seed}: dense training")
    ctx.init_params = common.init_params(ctx.model, data, init_key)
    t = time.perf_counter()
    ctx.dense_params, _, _ = dense_run(ctx.init_params, dense_tx.init(ctx.init_params),
                                       train_key, ctx.x_train, ctx.y_train)
    dense.append({"seed": seed, **measure(ctx.dense_params),
                  "seconds": time.perf_counter() - t})
    bar.update()
    for index, method in enumerate(methods):
      mkey = jax.random.fold_in(method_key, index)
      scores = None
      if method.kind == "one-shot":
        scores = scores_fns[method.name](ctx.dense_params, mkey)
      for sparsity in config.sparsities:
        bar.set_postfix_str(f"seed {seed}: {method.name} @ {sparsity:g}")
        t = time.perf_counter()
        record = {"method": method.name, "kind": method.kind, "sparsity": sparsity,
                  "seed": seed}
        if method.kind == "one-shot":
          masks = select_fns[method.select](scores, jnp.float32(sparsity))
          pruned = jaxprune.apply_masks(ctx.dense_params, masks)
          if method.after is not None:
            pruned = after_fns[method.name](ctx.dense_params, masks)
          record["one_shot"] = measure(pruned)
          final = pruned
          if finetune_run is not None:
            final, _, _ = finetune_run(pruned, dense_tx.init(pruned),
                                       jax.random.fold_in(mkey, 1 + int(1e6 * sparsity)),
                                       ctx.x_train, ctx.y_train, masks)
          if (method.name == config.per_layer and seed == 0
              and sparsity == max(config.sparsities)):
            per_layer = (sparsity, masks)
        else:
          final, masks = method.train(ctx, sparsity, jax.random.fold_in(mkey, 7))
          record["one_shot"] = None
        record["final"] = measure(final)
        record["measured_sparsity"] = float(jaxprune.summary.sparsity(masks)["total"])
        record["seconds"] = time.perf_counter() - t
        records.append(record)
        bar.update()
  bar.close()
  return {
      "config": dataclasses.asdict(config),
      "devices": [str(d) for d in jax.devices()],
      "dense": dense,
      "results": records,
      "per_layer": None if per_layer is None else {
          "method": config.per_layer, "sparsity": per_layer[0],
          "table": jaxprune.summary.table(per_layer[1]),
          "masks": per_layer[1]},
      "seconds": time.perf_counter() - wall,
      "cpu_seconds": time.process_time() - cpu,
  }


# --------------------------------------------------------------------------------------------
# Reporting.


def aggregate(results: dict) -> dict:
  """``{(method, sparsity): {"one_shot": (acc mean, acc std, loss mean) | None, "final": ...}}``."""
  groups: dict = {}
  for r in results["results"]:
    groups.setdefault((r["method"], r["sparsity"]), []).append(r)
  out = {}
  for key, rows in groups.items():
    entry = {}
    for phase in ("one_shot", "final"):
      values = [r[phase] for r in rows if r[phase] is not None]
      if not values:
        entry[phase] = None
        continue
      acc = np.array([v["accuracy"] for v in values])
      loss = np.array([v["loss"] for v in values])
      entry[phase] = (float(acc.mean()), float(acc.std()), float(loss.mean()))
    out[key] = entry
  return out


def format_table(results: dict, phase: str) -> str:
  """Rows = sparsity, columns = methods, cells = ``accuracy% / loss`` (mean over seeds)."""
  agg = aggregate(results)
  methods = list(dict.fromkeys(r["method"] for r in results["results"]))
  methods = [m for m in methods if any(agg[(m, s)][phase] is not None
                                       for s in results["config"]["sparsities"])]
  seeds = results["config"]["seeds"]

  def cell(entry):
    if entry is None:
      return "-"
    acc, std, loss = entry
    spread = f"±{100 * std:.1f}" if seeds > 1 else ""
    return f"{100 * acc:.1f}{spread} / {loss:.3f}"

  header = ["sparsity"] + methods
  rows = [[f"{s:.0%}"] + [cell(agg[(m, s)][phase]) for m in methods]
          for s in results["config"]["sparsities"]]
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows]
  return "\n".join(lines)


def report(results: dict) -> str:
  c = results["config"]
  dense = results["dense"]
  acc = np.mean([d["accuracy"] for d in dense])
  loss = np.mean([d["loss"] for d in dense])
  lines = [
      f"jaxprune study: {c['model']} on {c['dataset']}, {c['seeds']} seed(s), "
      f"{c['steps']} dense training steps, {c['finetune']} fine-tuning steps, "
      f"batch {c['batch_size']}, adamw lr {c['lr']:g} wd {c['weight_decay']:g}",
      f"dense: test accuracy {100 * acc:.1f}%, loss {loss:.3f}",
      "cells: test accuracy % / test loss" + (" (mean±std over seeds)" if c["seeds"] > 1
                                               else ""),
      "",
  ]
  if any(r["one_shot"] is not None for r in results["results"]):
    lines += ["one-shot, right after pruning (no fine-tuning):",
              format_table(results, "one_shot"), ""]
  lines += [f"after {c['finetune']} fine-tuning steps with the mask kept (one-shot methods), or "
            "at the end of training (training methods):", format_table(results, "final"), ""]
  if results.get("per_layer"):
    p = results["per_layer"]
    lines += [f"per-layer sparsity of {p['method']} at {p['sparsity']:.0%} (seed 0):",
              p["table"], ""]
  lines.append(f"run time: {results['seconds']:.1f} s wall, {results['cpu_seconds']:.1f} s CPU "
               f"({os.cpu_count()} CPU cores, {jax.default_backend()})")
  return "\n".join(lines)


def plot(results: dict, path: pathlib.Path) -> None:
  """Accuracy vs sparsity, one line per method; two panels (one-shot, final).

  Uses matplotlib's object API (no ``pyplot``): the backend is left alone, nothing stays open.
  """
  from matplotlib.figure import Figure

  agg = aggregate(results)
  sparsities = results["config"]["sparsities"]
  methods = list(dict.fromkeys(r["method"] for r in results["results"]))
  dense = 100 * np.mean([d["accuracy"] for d in results["dense"]])
  fig = Figure(figsize=(11, 4.2))
  axes = fig.subplots(1, 2, sharey=True)
  titles = {"one_shot": "one-shot (no fine-tuning)",
            "final": f"after {results['config']['finetune']} fine-tuning steps / training"}
  for ax, phase in zip(axes, ("one_shot", "final")):
    for method in methods:
      points = [(s, agg[(method, s)][phase]) for s in sparsities
                if agg[(method, s)][phase] is not None]
      if not points:
        continue
      xs = [100 * s for s, _ in points]
      ys = [100 * e[0] for _, e in points]
      errs = [100 * e[1] for _, e in points]
      ax.errorbar(xs, ys, yerr=errs if results["config"]["seeds"] > 1 else None, marker="o",
                  ms=3, capsize=2, label=method)
    ax.axhline(dense, color="k", ls="--", lw=1, label="dense")
    ax.set_title(titles[phase])
    ax.set_xlabel("sparsity (%)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy (%)")
  axes[1].legend(fontsize=8, loc="lower left")
  c = results["config"]
  fig.suptitle(f"jaxprune study: {c['model']} on {c['dataset']}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def save(results: dict, out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  out.mkdir(parents=True, exist_ok=True)
  json_path, png_path = out / "study.json", out / "study.png"
  serialisable = dict(results)
  if serialisable.get("per_layer"):
    per_layer = dict(serialisable["per_layer"])
    masks = per_layer.pop("masks")
    per_layer["sparsity_by_layer"] = jaxprune.summary.scalars(masks, prefix="")
    serialisable["per_layer"] = per_layer
  json_path.write_text(json.dumps(serialisable, indent=2, default=_json_default))
  plot(results, png_path)
  return json_path, png_path


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, tuple):
    return list(x)
  raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def main(argv=None) -> dict:
  config, out = parse_args(argv)
  results = run_study(config)
  json_path, png_path = save(results, out)
  print(report(results))
  print(f"wrote {json_path} and {png_path}")
  return results


if __name__ == "__main__":
  main()
