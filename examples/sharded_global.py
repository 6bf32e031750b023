"""Global magnitude pruning of a model whose params are sharded over a device mesh.

    python examples/sharded_global.py             # 8 fake CPU devices when there is no accelerator
    python examples/sharded_global.py --quick     # a smoke test

Each weight matrix is split over the devices of a ``jax.sharding.Mesh`` (axis "model"), trained,
then pruned with one global threshold. ``jaxprune.masks.global_topk`` finds the threshold by
counting (per-shard counts and an all-reduce of a few scalars), never by sorting or gathering a
sharded array: the masks come out sharded exactly like the params, and the compiled program has
no all-gather. The script prints the shardings and the collectives of the compiled HLO.

On a machine without an accelerator it asks XLA for 8 host (CPU) devices before importing jax.
The code itself is device-agnostic: on a GPU host or a Cloud TPU pod slice (after
``jax.distributed.initialize()`` on each host) ``jax.devices()`` lists the accelerators and the
same lines shard over all of them.
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  # Only the host (CPU) platform is affected: with a GPU or TPU present jax uses that instead.
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=8".strip()

import argparse  # noqa: E402
import re  # noqa: E402

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jaxprune  # noqa: E402


def leaf_spec(x, n: int) -> P:
  """Shards a leaf's largest axis divisible by ``n`` over "model"; replicates the rest."""
  axes = sorted(range(x.ndim), key=lambda a: -x.shape[a])
  for axis in axes:
    if x.shape[axis] % n == 0:
      spec = [None] * x.ndim
      spec[axis] = "model"
      return P(*spec)
  return P()


def collectives(hlo: str) -> dict[str, int]:
  """How many of each cross-device collective a compiled HLO module contains."""
  names = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
  return {n: len(re.findall(rf"\b{n}(?:-start)?\(", hlo)) for n in names}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_config_args(parser, models=("mlp",))
  parser.add_argument("--sparsity", type=float, default=0.9)
  args = parser.parse_args(argv)
  config = common.config_from_args(args)
  if not 0.0 <= args.sparsity < 1.0:
    parser.error(f"--sparsity must be in [0, 1); got {args.sparsity}")

  devices = jax.devices()
  mesh = Mesh(np.array(devices), ("model",))
  data = common.load_dataset(config.dataset, num_samples=config.num_samples)
  model = common.make_model("mlp", data, width=max(config.width, 8) * 2)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  params = common.init_params(model, data, init_key)
  shardings = jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x, len(devices))), params)
  params = jax.device_put(params, shardings)

  params = common.train(common.make_loss(model), params, config.optimizer(), data,
                        steps=config.steps, key=train_key, batch_size=config.batch_size)
  params = jax.device_put(params, shardings)  # training keeps this layout; make it explicit
  dense = common.evaluate(model, params, data.x_test, data.y_test)

  @jax.jit
  def prune(params, sparsity):
    masks = jaxprune.masks.global_topk(jaxprune.scores.magnitude(params), sparsity)
    return jaxprune.apply_masks(params, masks), masks

  sparsity = np.float32(args.sparsity)
  hlo = prune.lower(params, sparsity).compile().as_text()
  pruned, masks = prune(params, sparsity)
  pruned_acc = common.evaluate(model, pruned, data.x_test, data.y_test)
  counts = collectives(hlo)

  print(f"{len(devices)} {devices[0].platform.upper()} devices, mesh {dict(mesh.shape)}; "
        f"global magnitude pruning to {args.sparsity:.0%}")
  paths, leaves, _ = jaxprune.core.flatten_with_paths(params)
  mask_leaves = jaxprune.core.leaves_like(params, masks, name="masks")
  same = True
  print(f"{'path':16}{'shape':14}{'params sharding':22}{'mask sharding':22}shard")
  for path, x, m in zip(paths, leaves, mask_leaves):
    spec = x.sharding.spec
    mask_spec = "-" if m is None else str(m.sharding.spec)
    if m is not None:
      same &= m.sharding.is_equivalent_to(x.sharding, x.ndim)
    shard = x.addressable_shards[0].data.shape
    print(f"{path:16}{str(x.shape):14}{str(spec):22}{mask_spec:22}{shard}")
  print(jaxprune.summary.table(pruned))
  print(f"test accuracy: dense {100 * dense[1]:.1f}% -> pruned {100 * pruned_acc[1]:.1f}% "
        "(one-shot, no fine-tuning)")
  print(f"masks sharded like the params: {same}")
  print("collectives in the compiled pruning step: "
        + ", ".join(f"{k} {v}" for k, v in counts.items()))
  print(f"all-gather in the compiled HLO: {'yes' if counts['all-gather'] else 'no'}")
  return {"devices": len(devices), "same_sharding": bool(same), "collectives": counts,
          "dense": dense, "pruned": pruned_acc,
          "sparsity": float(jaxprune.summary.sparsity(pruned)["total"])}


if __name__ == "__main__":
  main()
