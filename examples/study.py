"""A pruning study: every family of jaxprune methods on one model, several seeds, one report.

    python examples/study.py                      # MNIST-1D CNN, 3 seeds, every family
    python examples/study.py --quick              # a smoke test: every family, tiny settings
    python examples/study.py --model mlp --seeds 1 --methods magnitude,gmp,rigl
    python examples/study_report.py --readme      # README's study tables from results/

Everything is generated or bundled offline (MNIST-1D by ``mnist1d.data.make_dataset``, digits by
scikit-learn). Per seed one dense model is trained on the training set minus a held-out
calibration split (the data of the data-based scores and of ``compensate``); the test set only
measures. Then, at each target sparsity of the kernels: one-shot scores prune the dense model
(accuracy right after pruning, then after fine-tuning with the mask kept); training methods
(GMP, straight-through, RigL, SET, lottery tickets) and regularisation (L1, group lasso) spend
their own budget. Structured removal cuts whole channels out of the arrays (FLOPs from XLA's
cost analysis, CPU latency measured), and the best pruned model is quantised to int8
(accuracy and export size). Writes ``study.json`` (every number, config, versions, seeds,
times), ``study.png`` and ``study.md`` (a report to paste) to ``--out``.

The numbers are reproducible: fixed seeds and data order give the same JSON on every run on the
same machine (times and latencies aside).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import tempfile
import time
from typing import Any

import common  # first: it puts the repository on sys.path when jaxprune is not installed
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprune
import study_report
from study_methods import FAMILIES, METHODS, Context, Method, register  # noqa: F401

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9)
# Per model: settings at which the dense model is good (MNIST-1D CNN: ~93% test accuracy).
MODEL_DEFAULTS = {
    "cnn": dict(steps=2000, finetune=500, lr=1e-2, weight_decay=0.1),
    "mlp": dict(steps=1500, finetune=500, lr=3e-3, weight_decay=1e-2),
}


@dataclasses.dataclass(frozen=True)
class StudyConfig(common.Config):
  """The shared example settings plus the study's own."""
  model: str = "cnn"
  steps: int = MODEL_DEFAULTS["cnn"]["steps"]
  finetune: int = MODEL_DEFAULTS["cnn"]["finetune"]
  lr: float = MODEL_DEFAULTS["cnn"]["lr"]
  weight_decay: float = MODEL_DEFAULTS["cnn"]["weight_decay"]
  methods: tuple[str, ...] = ()
  sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
  seeds: int = 3
  calib: int = 500
  cg_steps: int = 50
  l1: float = 3e-4
  group_lasso: float = 3e-3
  channel_fractions: tuple[float, ...] = (0.25, 0.5)
  quantize_at: float = 0.9
  latency_batch: int = 256
  per_layer: str = "global_magnitude"


def parse_args(argv=None) -> tuple[StudyConfig, pathlib.Path]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  names = ", ".join(f"{m.name}{'' if m.default else ' (not default)'}" for m in METHODS.values())
  add = parser.add_argument
  add("--dataset", choices=common.DATASETS, default="mnist1d")
  add("--model", choices=common.MODELS, default="cnn")
  add("--quick", action="store_true", help="tiny settings: a smoke test of every family")
  for flag, kind, text in [
      ("--steps", int, "dense training steps"), ("--finetune", int, "fine-tuning steps"),
      ("--lr", float, "AdamW learning rate"), ("--weight-decay", float, "AdamW weight decay"),
      ("--batch-size", int, "examples per step (default 128)"),
      ("--seeds", int, "number of seeds (default 3; --quick: 1)"),
      ("--calib", int, "training examples held out for calibration (default 500)"),
      ("--l1", float, "L1 threshold per step (default 3e-4)"),
      ("--group-lasso", float, "group-lasso threshold per step (default 3e-3)")]:
    add(flag, type=kind, default=None, help=text + " (default: per model)" * (
        flag in ("--steps", "--finetune", "--lr", "--weight-decay")))
  add("--seed", type=int, default=0, help="base seed")
  add("--methods", default=None, help=f"comma-separated, or 'all'. Known: {names}")
  add("--sparsities", default=None,
      help=f"fractions of zeros (default {','.join(map(str, DEFAULT_SPARSITIES))})")
  add("--channels", default=None, help="fractions of channels removed (default 0.25,0.5)")
  add("--per-layer", default="global_magnitude",
      help="the one-shot method whose masks at the highest sparsity are shown per layer")
  add("--out", default="results", help="folder for study.json, study.png and study.md")
  args = parser.parse_args(argv)
  model = dict(MODEL_DEFAULTS[args.model])
  if args.quick:
    model.update(steps=200, finetune=50)
  pick = lambda value, default: default if value is None else value  # noqa: E731
  config = StudyConfig(
      dataset=args.dataset, model=args.model, seed=args.seed,
      steps=pick(args.steps, model["steps"]), finetune=pick(args.finetune, model["finetune"]),
      lr=pick(args.lr, model["lr"]), weight_decay=pick(args.weight_decay, model["weight_decay"]),
      batch_size=pick(args.batch_size, 128), width=64 if args.quick else 256,
      num_samples=1000 if args.quick else None,
      methods=_methods(args.methods, parser),
      sparsities=_fractions(args.sparsities, parser, "--sparsities") if args.sparsities
      else ((0.5, 0.9) if args.quick else DEFAULT_SPARSITIES),
      channel_fractions=_fractions(args.channels, parser, "--channels") if args.channels
      else ((0.5,) if args.quick else (0.25, 0.5)),
      seeds=pick(args.seeds, 1 if args.quick else 3),
      calib=pick(args.calib, 128 if args.quick else 500), cg_steps=10 if args.quick else 50,
      l1=pick(args.l1, 3e-4), group_lasso=pick(args.group_lasso, 3e-3),
      per_layer=args.per_layer)
  if config.per_layer not in METHODS:
    parser.error(f"unknown --per-layer {config.per_layer!r}; known: {', '.join(METHODS)}")
  if config.seeds < 1 or config.calib < 1 or config.steps < 1 or config.finetune < 0:
    parser.error("--seeds, --calib and --steps must be >= 1 and --finetune >= 0")
  if config.l1 < 0 or config.group_lasso < 0:
    parser.error("--l1 and --group-lasso must be >= 0")
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


def _fractions(text, parser, flag) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    parser.error(f"{flag} must be comma-separated numbers; got {text!r}")
  if not values or any(not 0.0 < v < 1.0 for v in values):
    parser.error(f"{flag} must be fractions in (0, 1); got {text!r}")
  return tuple(sorted(set(values)))


def make_context(config: StudyConfig):
  """The model, its loss and the data: training set minus a held-out calibration split."""
  data = common.load_dataset(config.dataset, num_samples=config.num_samples, seed=config.seed)
  model = common.make_model(config.model, data, width=config.width)
  n = min(config.calib, len(data.x_train) // 4)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  ctx = Context(config, model, common.make_loss(model), x[:-n], y[:-n], x[-n:], y[-n:])
  return ctx, data


def _cost(fn, params, x):
  """(FLOPs per example, median milliseconds of the batch ``x``)."""
  total, ms = common.cost(fn, params, x)
  return total / x.shape[0], ms


def _small_loss(small_fn):
  return lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(
      small_fn(p, x), y).mean()


def structured(ctx, seed_key, measure, x_bench) -> list[dict]:
  """Channels physically removed (``jaxprune.structure``), fine-tuned, FLOPs and latency."""
  c = ctx.config
  flops0, ms0 = _cost(ctx.apply_fn, ctx.dense_params, x_bench)
  grads = jax.grad(ctx.loss_fn)(ctx.dense_params, ctx.x_calib, ctx.y_calib)
  rows = [{"removal": "dense", "fraction": 0.0, "channels_cut": 0.0,
           "params": _size(ctx.dense_params),
           "flops": flops0, "flops_ratio": 1.0, "latency_ms": ms0, "speedup": 1.0,
           "pruned": None, "final": measure(ctx.dense_params)}]
  candidates = [(f"{score} norm" if score in ("l1", "l2") else score, f,
                 dict(sparsity=f, scores=score, grads=grads))
                for f in c.channel_fractions for score in ("l2", "taylor")]
  if "group_lasso/trained" in ctx.trainers:
    trained = ctx.trainers["group_lasso/trained"]
    keep = jaxprune.regularize.kept_channels(trained, ctx.graph)
    candidates.append(("group lasso zeros", None, dict(keep=keep, params=trained)))
  for i, (name, fraction, options) in enumerate(candidates):
    params = options.pop("params", ctx.dense_params)
    small, small_fn = jaxprune.structure.prune(ctx.graph, params, **options)
    before = measure(small, small_fn)
    tuned = small
    if c.finetune:
      run = common.make_trainer(_small_loss(small_fn), c.optimizer(),
                                batch_size=c.batch_size, steps=c.finetune)
      tuned = run(small, None, jax.random.fold_in(seed_key, i), ctx.x_train, ctx.y_train)[0]
    flops, ms = _cost(small_fn, tuned, x_bench)
    kept = _size(tuned)
    rows.append({"removal": name, "fraction": fraction,  # None: what the penalty zeroed
                 "channels_cut": 1.0 - _channels(ctx.graph, small) / _channels(
                     ctx.graph, ctx.dense_params), "params": kept, "flops": flops,
                 "flops_ratio": flops0 / flops,
                 "latency_ms": ms, "speedup": ms0 / ms, "pruned": before,
                 "final": measure(tuned, small_fn)})
  return rows


def _size(params) -> int:
  return int(optax.tree_utils.tree_size(params))


def _channels(graph, params) -> int:
  """Prunable channels in ``params``: the size of each prunable group's first member axis."""
  paths, leaves, _ = jaxprune.core.flatten_with_paths(params)
  by_path = dict(zip(paths, leaves))
  return sum(by_path[g.members[0].path].shape[g.members[0].axis]
             for g in graph.groups if g.prunable)


def quantized(config, kept, measure, dense_params) -> list[dict]:
  """Exports of the dense and the best pruned model (float32; int8 and int4 per output channel,
  scales from the kept weights): bytes on disk, and the accuracy of what each file holds
  (loaded back with ``export.load``)."""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    def export(name, params, masks=None, bits=None):
      path = jaxprune.export.save(f"{tmp}/{name}", params, masks, bits=bits)
      loaded, _ = jaxprune.export.load(path, target=params)
      return pathlib.Path(path).stat().st_size, measure(loaded)

    dense_bytes, dense_final = export("dense", dense_params)
    rows.append({"model": "dense float32", "bits": 32, "sparsity": 0.0, "final": dense_final,
                 "bytes": dense_bytes, "size_ratio": 1.0})
    dense8_bytes, dense8_final = export("dense8", dense_params, bits=8)
    rows.append({"model": "dense int8", "bits": 8, "sparsity": 0.0, "final": dense8_final,
                 "bytes": dense8_bytes, "size_ratio": dense8_bytes / dense_bytes})
    name, sparsity, params, masks = kept
    for bits in (None, 8, 4):
      nbytes, final = export(f"{name}{bits}", params, masks, bits=bits)
      rows.append({"model": f"{name} {'float32' if bits is None else f'int{bits}'}",
                   "bits": bits or 32, "sparsity": sparsity, "final": final,
                   "bytes": nbytes, "size_ratio": nbytes / dense_bytes})
  return rows


def run_study(config: StudyConfig, *, progress: bool = True) -> dict:
  """Runs every (seed, method, sparsity), structured removal and int8; a JSON-able dict."""
  from tqdm.auto import tqdm

  wall, cpu = time.perf_counter(), time.process_time()
  machine = study_report.machine()
  methods = [METHODS[n] for n in config.methods]
  ctx, data = make_context(config)
  evaluate = common.make_evaluate(ctx.model)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  x_bench = x_test[:config.latency_batch]

  def measure(params, fn=None):
    if fn is None:
      loss, acc = evaluate(params, x_test, y_test)
    else:
      logits = jax.jit(fn)(params, x_test)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_test).mean()
      acc = jnp.mean(jnp.argmax(logits, -1) == y_test)
    return {"loss": float(loss), "accuracy": float(acc)}

  scores_fns = {m.name: jax.jit(lambda p, k, m=m: m.score(ctx, p, k))
                for m in methods if m.family == "one-shot"}
  after_fns = {m.name: jax.jit(lambda p, masks, m=m: m.after(ctx, p, masks))
               for m in methods if m.after is not None}
  select_fns = {"layerwise": jax.jit(jaxprune.masks.topk),
                "global": jax.jit(jaxprune.masks.global_topk)}
  dense_run = ctx.trainer("dense", config.optimizer(), config.steps)
  jobs = config.seeds * (3 + len(methods))
  bar = tqdm(total=jobs, desc="study", unit="job", disable=not progress, file=sys.stderr)
  dense, records, structured_rows, quantized_rows, per_layer = [], [], [], [], None
  keep_for_int8: dict = {}
  q_sparsity = min(config.sparsities, key=lambda s: abs(s - config.quantize_at))
  for seed in range(config.seeds):
    key = jax.random.key(config.seed * 1000 + seed)
    init_key, train_key, method_key, structure_key = jax.random.split(key, 4)
    bar.set_postfix_str(f"seed {seed}: dense")
    ctx.init_params = common.init_params(ctx.model, data, init_key)
    if ctx.graph is None:
      ctx.graph = jaxprune.structure.trace(ctx.apply_fn, ctx.init_params, x_test[:1])
    ctx.trainers.pop("group_lasso/trained", None)
    t = time.perf_counter()
    ctx.dense_params = jax.block_until_ready(
        dense_run(ctx.init_params, None, train_key, ctx.x_train, ctx.y_train)[0])
    dense.append({"seed": seed, **measure(ctx.dense_params), "seconds": time.perf_counter() - t})
    bar.update()
    for index, method in enumerate(methods):
      bar.set_postfix_str(f"seed {seed}: {method.name}")
      mkey = jax.random.fold_in(method_key, index)
      t = time.perf_counter()
      outs = jax.block_until_ready(
          _run_method(ctx, method, mkey, scores_fns, after_fns, select_fns, measure))
      seconds = (time.perf_counter() - t) / len(outs)
      for sparsity, (params, masks, info, one_shot) in zip(config.sparsities, outs):
        records.append({"method": method.name, "family": method.family, "sparsity": sparsity,
                        "seed": seed, "one_shot": one_shot, "final": measure(params),
                        "measured_sparsity": float(jaxprune.summary.sparsity(masks)["total"]),
                        **info, "seconds": seconds})
        if sparsity == q_sparsity:
          keep_for_int8[(method.name, seed)] = (params, masks)
        if method.name == config.per_layer and seed == 0 and sparsity == max(
            config.sparsities):
          per_layer = {"method": method.name, "sparsity": sparsity,
                       "table": jaxprune.summary.table(masks),
                       "sparsity_by_layer": jaxprune.summary.scalars(masks, prefix="")}
      bar.update()
    bar.set_postfix_str(f"seed {seed}: structured")
    for row in structured(ctx, structure_key, measure, x_bench):
      structured_rows.append({"seed": seed, **row})
    bar.update()
    bar.set_postfix_str(f"seed {seed}: int8")
    best = study_report.best_method(records, q_sparsity)
    if best is not None:
      params, masks = keep_for_int8[(best, seed)]
      for row in quantized(config, (best, q_sparsity, params, masks), measure,
                           ctx.dense_params):
        quantized_rows.append({"seed": seed, **row})
    bar.update()
  bar.close()
  return {
      "config": dataclasses.asdict(config),
      "methods": {m.name: {"family": m.family, "description": m.description,
                           "reference": m.reference} for m in methods},
      "versions": study_report.versions(),
      "machine": dict(machine, load_after=study_report.machine()["load"]),
      "dense": dense, "results": records, "structured": structured_rows,
      "quantized": quantized_rows, "per_layer": per_layer,
      "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
  }


def _run_method(ctx, method: Method, key, scores_fns, after_fns, select_fns, measure):
  """``[(params, masks, info, one_shot measure or None)]``, one per sparsity."""
  sparsities = ctx.config.sparsities
  if method.family != "one-shot":
    return [(p, m, info, None) for p, m, info in method.run(ctx, sparsities, key)]
  scores = scores_fns[method.name](ctx.dense_params, key)
  out = []
  for i, sparsity in enumerate(sparsities):
    masks = select_fns[method.select](scores, jnp.float32(sparsity))
    pruned = (after_fns[method.name](ctx.dense_params, masks) if method.after is not None
              else jaxprune.apply_masks(ctx.dense_params, masks))
    one_shot = measure(pruned)
    tuned = ctx.finetune(pruned, masks, jax.random.fold_in(key, 1 + i))
    out.append((tuned, masks, {}, one_shot))
  return out


def main(argv=None) -> dict:
  config, out = parse_args(argv)
  results = run_study(config)
  paths = study_report.save(results, out)
  print(study_report.text(results))
  print("wrote " + ", ".join(str(p) for p in paths))
  return results


if __name__ == "__main__":
  main()
