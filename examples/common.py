"""Shared pieces of the examples: offline datasets, small flax models, a fast training loop.

Everything here runs on a laptop CPU in seconds and downloads nothing:

* datasets: MNIST-1D generated on the fly by ``mnist1d.data.make_dataset`` (10 classes, 40
  features) and scikit-learn's bundled 8x8 ``load_digits``; standardised with training-set
  statistics and split into train/test;
* models: a flax linen :class:`MLP` and a small 1-D/2-D :class:`CNN`;
* training: :func:`make_trainer` builds one jitted function that runs many optax steps in a
  ``lax.scan`` (one dispatch per call, not per step), optionally keeping pruned weights at 0;
* evaluation: :func:`evaluate` returns test loss and accuracy.

The scripts beside this file import it as ``import common`` (Python puts a script's folder first
on ``sys.path``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if (_ROOT / "jaxprune" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))  # run from a clone without `pip install -e .`

import jaxprune  # noqa: E402

DATASETS = ("mnist1d", "digits")
MODELS = ("mlp", "cnn")


class Dataset(NamedTuple):
  """A standardised classification dataset, inputs flattened to ``(n, features)``.

  Attributes:
    x_train, y_train, x_test, y_test: float32 inputs and int32 labels (numpy arrays).
    shape: the spatial shape of one example (``(40,)`` for MNIST-1D, ``(8, 8)`` for digits);
      ``CNN`` reshapes flat inputs to it.
    num_classes: number of labels.
    name: the dataset's name.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  shape: tuple[int, ...]
  num_classes: int
  name: str


def _standardise(x_train, x_test):
  mean = x_train.mean(axis=0, keepdims=True)
  std = x_train.std(axis=0, keepdims=True)
  std = np.where(std > 1e-8, std, 1.0)  # constant features (digits' border pixels) stay 0
  return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def load_dataset(name: str = "mnist1d", *, num_samples: int | None = None,
                 seed: int = 0) -> Dataset:
  """Loads a dataset offline: ``"mnist1d"`` (generated) or ``"digits"`` (bundled with sklearn).

  Args:
    name: ``"mnist1d"`` or ``"digits"``.
    num_samples: MNIST-1D only: number of examples to generate (default 5000, the standard
      dataset: 4000 train, 1000 test). Fewer is faster (for smoke tests).
    seed: the train/test split seed for digits (MNIST-1D keeps its own standard split).

  Returns:
    A :class:`Dataset`.
  """
  if name == "mnist1d":
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    if num_samples is not None:
      if num_samples < 20:
        raise ValueError(f"num_samples must be >= 20 (two per class); got {num_samples}.")
      args.num_samples = int(num_samples)
    state = np.random.get_state()  # make_dataset reseeds numpy's global generator
    try:
      data = make_dataset(args)  # generated in memory: never touches the network or disk
    finally:
      np.random.set_state(state)
    x_train, x_test = _standardise(np.asarray(data["x"]), np.asarray(data["x_test"]))
    return Dataset(x_train, np.asarray(data["y"], np.int32), x_test,
                   np.asarray(data["y_test"], np.int32), (x_train.shape[1],), 10, name)
  if name == "digits":
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y)
    x_train, x_test = _standardise(x_train, x_test)
    return Dataset(x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32), (8, 8),
                   10, name)
  raise ValueError(f"dataset must be one of {DATASETS}; got {name!r}.")


class MLP(nn.Module):
  """A ReLU multilayer perceptron on flattened inputs."""
  num_classes: int = 10
  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"dense{i}")(x))
    return nn.Dense(self.num_classes, name="head")(x)


def _patches(x, size: int, stride: int):
  """``(batch, *spatial, c) -> (batch, *out, size**d * c)``: SAME-padded windows, by slicing."""
  spatial = x.shape[1:-1]
  pads, outs = [(0, 0)], []
  for n in spatial:
    out = -(-n // stride)
    total = max((out - 1) * stride + size - n, 0)
    pads.append((total // 2, total - total // 2))
    outs.append(out)
  x = jnp.pad(x, pads + [(0, 0)])
  windows = [x]
  for axis, out in enumerate(outs, start=1):  # one axis at a time: size**d slices in all
    windows = [jax.lax.slice_in_dim(w, j, j + (out - 1) * stride + 1, stride, axis)
               for w in windows for j in range(size)]
  return jnp.concatenate(windows, axis=-1)


class Conv(nn.Module):
  """A SAME-padded strided convolution as patches @ kernel.

  The kernel has flax's ``nn.Conv`` layout ``(*window, in, out)``. XLA:CPU runs a real
  convolution ~10x slower inside ``lax.scan`` (the training loop) than outside it; a matmul over
  sliced patches does not have that problem and prunes exactly like a conv kernel.
  """
  features: int
  size: int
  stride: int = 1
  dims: int = 1

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.size,) * self.dims + (channels, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    patches = _patches(x, self.size, self.stride)
    # patches' last axis is ordered (window..., channel) to match the kernel's layout
    return patches @ kernel.reshape(-1, self.features) + bias


class CNN(nn.Module):
  """A small strided CNN: 1-D for sequences (``shape=(40,)``), 2-D for images (``(8, 8)``)."""
  num_classes: int = 10
  shape: tuple[int, ...] = (40,)
  channels: Sequence[int] = (32, 32, 32)

  @nn.compact
  def __call__(self, x):
    dims = len(self.shape)
    x = x.reshape((x.shape[0], *self.shape, 1))
    for i, width in enumerate(self.channels):
      stride = 2 if dims == 1 or i > 0 else 1
      x = nn.relu(Conv(width, 5 if dims == 1 else 3, stride, dims, name=f"conv{i}")(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, name="head")(x)


def make_model(name: str, data: Dataset, *, width: int = 256) -> nn.Module:
  """``"mlp"`` or ``"cnn"`` for ``data``; ``width`` is the MLP's hidden width."""
  if name == "mlp":
    return MLP(data.num_classes, (width, width))
  if name == "cnn":
    return CNN(data.num_classes, data.shape)
  raise ValueError(f"model must be one of {MODELS}; got {name!r}.")


def init_params(model: nn.Module, data: Dataset, key) -> Any:
  """The model's ``params`` collection, initialised on one training example."""
  return jax.jit(model.init)(key, jnp.asarray(data.x_train[:1]))["params"]


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_loss(model: nn.Module) -> jaxprune.scores.ModelLoss:
  """``loss_fn(params, x, y) -> scalar``: mean softmax cross-entropy, as a ``ModelLoss``.

  This is the form jaxprune's second-order scores and ``compensate`` take: a
  ``jaxprune.scores.ModelLoss`` (a model and a loss on its outputs, callable as
  ``loss_fn(params, x, y)``), which the Gauss-Newton methods need.
  """
  return jaxprune.scores.ModelLoss(lambda params, x: model.apply({"params": params}, x),
                                   _cross_entropy)


def make_evaluate(model: nn.Module) -> Callable:
  """A jitted ``evaluate(params, x, y) -> (loss, accuracy)`` over the whole set at once."""

  @jax.jit
  def evaluate(params, x, y):
    logits = model.apply({"params": params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  return evaluate


def _compiled_flops(fn, params, x):
  compiled = jax.jit(fn).lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list on older jax
  return compiled, float(cost.get("flops", np.nan))


def flops(fn, params, x) -> float:
  """FLOPs of ``fn(params, x)`` from XLA's cost analysis of the compiled call."""
  return _compiled_flops(fn, params, x)[1]


def cost(fn, params, x, repeats: int = 20) -> tuple[float, float]:
  """(FLOPs, median milliseconds) of the jitted ``fn(params, x)``, after one warm-up call."""
  compiled, total = _compiled_flops(fn, params, x)
  jax.block_until_ready(compiled(params, x))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - start)
  return total, 1e3 * float(np.median(times))


def evaluate(model: nn.Module, params, x, y) -> tuple[float, float]:
  """Test loss and accuracy as Python floats (compiles once per model)."""
  loss, acc = make_evaluate(model)(params, jnp.asarray(x), jnp.asarray(y))
  return float(loss), float(acc)


def make_trainer(loss_fn: Callable, tx, *, batch_size: int = 128, steps: int = 1000,
                 extra_args: Callable | None = None,
                 forward: Callable | None = None) -> Callable:
  """Builds ``run(params, opt_state, key, x, y, masks=None, hyper=None)``.

  ``run`` returns ``(params, opt_state, losses)``. It is jitted once and performs ``steps``
  optax steps inside a ``lax.scan``, each on a minibatch drawn uniformly (with replacement) from
  ``(x, y)``. When ``masks`` is given, pruned weights are set to exactly 0 after every step
  (fine-tuning with the mask kept: the guarantee of ``jaxprune.transforms.keep_sparse``, with the
  masks an argument rather than part of the optimizer, so one compilation serves all masks).

  Args:
    loss_fn: ``loss_fn(params, x, y) -> scalar``.
    tx: an optax transformation, e.g. ``optax.chain(optax.adamw(1e-3), jaxprune...prune(...))``,
      or a function ``tx(hyper) -> transformation`` called inside the jitted ``run`` with its
      ``hyper`` argument (traced), so that e.g. a target sparsity does not cause a
      recompilation. ``opt_state=None`` initialises the state inside ``run``.
    batch_size: examples per step.
    steps: steps per call of ``run``.
    extra_args: optional ``extra_args(params, grads, x, y, key) -> dict`` of keyword arguments
      given to ``tx.update`` (e.g. ``grads=`` for a gradient-based pruning score).
    forward: optional ``forward(params, opt_state) -> params`` that the loss is evaluated at
      (e.g. ``jaxprune.transforms.masked_params`` for straight-through training); the
      gradient is taken with respect to ``params``.

  Returns:
    The jitted ``run``; ``losses`` holds the training loss of every step.
  """
  if steps < 1 or batch_size < 1:
    raise ValueError(f"steps and batch_size must be >= 1; got {steps} and {batch_size}.")
  is_factory = not isinstance(tx, optax.GradientTransformation)
  if is_factory and not callable(tx):
    raise TypeError(f"tx must be an optax GradientTransformation or a function hyper -> "
                    f"transformation; got {type(tx).__name__}.")
  grad_fn = jax.value_and_grad(
      loss_fn if forward is None else lambda p, s, x, y: loss_fn(forward(p, s), x, y))

  def one_step(transform, carry, key, x, y, masks):
    params, opt_state = carry
    batch_key, extra_key = jax.random.split(key)
    index = jax.random.randint(batch_key, (batch_size,), 0, x.shape[0])
    xb, yb = x[index], y[index]
    loss, grads = (grad_fn(params, xb, yb) if forward is None
                   else grad_fn(params, opt_state, xb, yb))
    kwargs = {} if extra_args is None else extra_args(params, grads, xb, yb, extra_key)
    updates, opt_state = transform.update(grads, opt_state, params, **kwargs)
    params = optax.apply_updates(params, updates)
    if masks is not None:
      params = jaxprune.apply_masks(params, masks)
    return (params, opt_state), loss

  @jax.jit
  def run(params, opt_state, key, x, y, masks=None, hyper=None):
    transform = tx(hyper) if is_factory else tx
    if opt_state is None:
      opt_state = transform.init(params)
    keys = jax.random.split(key, steps)
    (params, opt_state), losses = jax.lax.scan(
        lambda carry, k: one_step(transform, carry, k, x, y, masks), (params, opt_state), keys)
    return params, opt_state, losses

  return run


def train(loss_fn: Callable, params, tx, data: Dataset, *,
          steps: int, key, batch_size: int = 128, masks=None,
          extra_args: Callable | None = None):
  """Trains ``params`` for ``steps`` steps on ``data``'s training set; returns new params.

  A convenience around :func:`make_trainer` (which compiles once per call of this function:
  build the trainer yourself to reuse it).
  """
  run = make_trainer(loss_fn, tx, batch_size=batch_size, steps=steps, extra_args=extra_args)
  params, _, _ = run(params, None, key, jnp.asarray(data.x_train), jnp.asarray(data.y_train),
                     masks)
  return params


def pruned_are_zero(params, masks) -> bool:
  """True when every entry that ``masks`` prunes is exactly 0 in ``params`` (any pytree)."""
  leaves = jax.tree.leaves(params)
  mask_leaves = jaxprune.core.leaves_like(params, masks, name="masks")
  return all(bool(jnp.all(jnp.where(m, True, w == 0)))
             for w, m in zip(leaves, mask_leaves) if m is not None)


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings shared by the examples; :meth:`quick` gives the tiny smoke-test settings."""
  dataset: str = "mnist1d"
  model: str = "mlp"
  steps: int = 1500
  finetune: int = 500
  batch_size: int = 128
  lr: float = 3e-3
  weight_decay: float = 1e-2
  width: int = 256
  num_samples: int | None = None
  seed: int = 0

  @classmethod
  def quick(cls, **changes) -> "Config":
    """Tiny settings for CI smoke tests: a few hundred steps on a smaller dataset."""
    return dataclasses.replace(cls(steps=300, finetune=50, width=64, num_samples=1000),
                               **changes)

  def optimizer(self) -> optax.GradientTransformation:
    """AdamW with this config's learning rate and weight decay (used for every phase)."""
    return optax.adamw(self.lr, weight_decay=self.weight_decay)


def add_config_args(parser, defaults: Config | None = None,
                    models: Sequence[str] = MODELS) -> None:
  """Adds the shared command-line options (``--dataset``, ``--model``, ``--steps``, ...)."""
  d = defaults or Config()
  parser.add_argument("--dataset", choices=DATASETS, default=d.dataset)
  parser.add_argument("--model", choices=tuple(models), default=d.model)
  parser.add_argument("--steps", type=int, default=None,
                      help=f"dense training steps (default {d.steps}; --quick: "
                      f"{Config.quick().steps})")
  parser.add_argument("--finetune", type=int, default=None,
                      help=f"fine-tuning steps with the mask kept (default {d.finetune})")
  parser.add_argument("--batch-size", type=int, default=d.batch_size)
  parser.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
  parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
  parser.add_argument("--seed", type=int, default=d.seed)
  parser.add_argument("--quick", action="store_true",
                      help="tiny settings (a smoke test): fewer steps, smaller data and model")


def config_from_args(args) -> Config:
  """The :class:`Config` chosen on the command line (``--quick`` first, then explicit flags)."""
  base = Config.quick() if args.quick else Config()
  changes = dict(dataset=args.dataset, model=args.model, batch_size=args.batch_size,
                 lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
  if args.steps is not None:
    changes["steps"] = args.steps
  if args.finetune is not None:
    changes["finetune"] = args.finetune
  config = dataclasses.replace(base, **changes)
  if config.steps < 1 or config.finetune < 0:
    raise ValueError(f"--steps must be >= 1 and --finetune >= 0; got {config.steps} and "
                     f"{config.finetune}.")
  return config
