"""A byte-level GPT on the Python standard library: data, model, training, perplexity.

Nothing is downloaded: the text is the ``.py`` sources that ship with every Python install
(``sysconfig.get_paths()["stdlib"]``, without test suites, ``idlelib``, ``lib2to3`` and
site-packages), as a fixed, sorted file list; every 10th file is held out for validation.
The model is a pre-norm GPT in flax linen with separate ``query``/``key``/``value``/``out``
projections and a 4x MLP per block (all plain ``nn.Dense``), learned positions and an untied
byte head. ``examples/train_lm.py`` trains and saves it, ``examples/prune_lm.py`` prunes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import sysconfig
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if (_ROOT / "jaxprune" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))  # run from a clone without `pip install -e .`

_SKIP = ("test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages")


@dataclasses.dataclass(frozen=True)
class Config:
  """Model shape: ``layers`` blocks of width ``width`` with ``heads`` heads over ``context``."""
  layers: int = 4
  width: int = 256
  heads: int = 4
  context: int = 128
  vocab: int = 256


def corpus(max_bytes: int | None = None):
  """``(train, valid)`` uint8 arrays: stdlib sources, every 10th file (sorted) held out."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = sorted(p for p in root.rglob("*.py")
                 if not any(part in _SKIP for part in p.relative_to(root).parts))
  train, valid = [], []
  for i, path in enumerate(files):
    (valid if i % 10 == 9 else train).append(path.read_bytes())
  join = lambda parts: np.frombuffer(b"\n".join(parts), np.uint8)
  train, valid = join(train), join(valid)
  if max_bytes is not None:
    train, valid = train[:max_bytes], valid[:max(max_bytes // 10, 4096)]
  return train, valid


def windows(data: np.ndarray, count: int, length: int, seed: int) -> np.ndarray:
  """``count`` windows of ``length + 1`` bytes at seeded random offsets, int32."""
  starts = np.random.default_rng(seed).integers(0, len(data) - length - 1, count)
  return np.stack([data[s:s + length + 1] for s in starts]).astype(np.int32)


class Block(nn.Module):
  cfg: Config

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    b, t, d = x.shape
    h = nn.LayerNorm(name="ln1")(x)
    split = lambda y: y.reshape(b, t, cfg.heads, d // cfg.heads)
    q = split(nn.Dense(d, name="query")(h))
    k = split(nn.Dense(d, name="key")(h))
    v = split(nn.Dense(d, name="value")(h))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // cfg.heads)
    causal = jnp.tril(jnp.ones((t, t), bool))
    attn = jax.nn.softmax(jnp.where(causal, logits, -1e9), axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, d)
    x = x + nn.Dense(d, name="out")(y)
    h = nn.LayerNorm(name="ln2")(x)
    h = nn.Dense(4 * d, name="fc1")(h)
    return x + nn.Dense(d, name="fc2")(nn.gelu(h))


class GPT(nn.Module):
  """Byte-level GPT: ``tokens (batch, time) int -> logits (batch, time, 256)``."""
  cfg: Config

  @nn.compact
  def __call__(self, tokens):
    cfg = self.cfg
    x = nn.Embed(cfg.vocab, cfg.width, name="embed")(tokens)
    pos = self.param("pos", nn.initializers.normal(0.02), (cfg.context, cfg.width))
    x = x + pos[:tokens.shape[1]]
    for i in range(cfg.layers):
      x = Block(cfg, name=f"block{i}")(x)
    return nn.Dense(cfg.vocab, name="head")(nn.LayerNorm(name="ln_f")(x))


def loss_fn(model, params, batch):
  """Mean next-byte cross-entropy (nats) of ``batch`` windows of ``context + 1`` bytes."""
  logits = model.apply({"params": params}, batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def perplexity(model, params, data: np.ndarray, batch: int = 32) -> float:
  """exp(mean NLL per byte) over ``data`` windows (evaluated ``batch`` at a time)."""
  nll = jax.jit(lambda p, b: loss_fn(model, p, b))
  losses = [float(nll(params, data[i:i + batch])) * len(data[i:i + batch])
            for i in range(0, len(data), batch)]
  return math.exp(sum(losses) / len(data))


def train(cfg: Config, train_data: np.ndarray, *, steps: int, batch: int = 32, lr: float = 2e-3,
          seed: int = 0, log_every: int = 50, budget_s: float | None = None):
  """Trains deterministically (fixed init key and batch order); returns ``(model, params)``."""
  model = GPT(cfg)
  params = model.init(jax.random.key(seed), jnp.zeros((1, cfg.context), jnp.int32))["params"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10 + 1), steps,
                                                lr / 10)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
  state = opt.init(params)

  @jax.jit
  def step(params, state, b):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, b))(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  rng = np.random.default_rng(seed + 1)
  start = time.perf_counter()
  for i in range(steps):
    starts = rng.integers(0, len(train_data) - cfg.context - 1, batch)
    b = np.stack([train_data[s:s + cfg.context + 1] for s in starts]).astype(np.int32)
    params, state, loss = step(params, state, b)
    if log_every and (i % log_every == 0 or i == steps - 1):
      print(f"step {i:5d}  loss {float(loss):.3f}  ({time.perf_counter() - start:.0f} s)",
            flush=True)
    if budget_s is not None and time.perf_counter() - start > budget_s:
      print(f"stopping at step {i} (time budget {budget_s:.0f} s)", flush=True)
      break
  return model, params


def save(path, cfg: Config, params) -> None:
  """Writes ``params`` (npz, one entry per ``a/b/c`` path) and ``cfg`` (json) under ``path``."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  np.savez(path / "params.npz", **flat)
  (path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))


def load(path):
  """Reads what :func:`save` wrote: ``(model, params)``."""
  path = pathlib.Path(path)
  cfg = Config(**json.loads((path / "config.json").read_text()))
  with np.load(path / "params.npz") as f:
    flat = {tuple(k.split("/")): jnp.asarray(f[k]) for k in f.files}
  return GPT(cfg), traverse_util.unflatten_dict(flat)
