"""Pruning during training on a multi-process JAX runtime, with checkpoints, from one script.

    python examples/multihost.py                   # one process (4 fake CPU devices on a CPU)
    python examples/multihost.py --processes 2     # 2 local processes x 2 CPU devices, one mesh
    python examples/multihost.py --quick           # a smoke test (either form)

On a Cloud TPU pod slice, run the same script on every host (one process per host; the
checkpoint directory must be on a file system all hosts share, e.g. a Filestore/NFS mount or a
bucket mounted with gcsfuse)::

    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all --command \\
      "cd jaxprune && python examples/multihost.py --distributed --checkpoint /mnt/shared/run"

``--distributed`` calls ``jax.distributed.initialize()`` (which finds the coordinator on TPU
pods by itself); ``--processes N`` starts N local processes that do the same with an explicit
local coordinator, gloo CPU collectives and 2 fake CPU devices each. Every process builds the
same mesh over all devices of all processes; params are created sharded
(``jax.make_array_from_callback``: each process only materialises its own shards), trained
with ``optax.chain(optax.adamw(...), jaxprune.prune(...))``, checkpointed with
``jaxprune.checkpoint.save`` (each process writes its shards; process 0 finalises), and
restored onto a different sharding. Only process 0 prints.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--processes", type=int, default=1, help="local processes to start (CPU)")
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() (pod slices, SLURM, ...)")
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--sparsity", type=float, default=0.8)
  p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: a temp dir)")
  p.add_argument("--quick", action="store_true", help="a few steps (smoke test)")
  p.add_argument("--timeout", type=float, default=600, help="seconds before --processes gives up")
  p.add_argument("--_child", nargs=3, metavar=("ID", "N", "PORT"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.processes < 1:
    p.error(f"--processes must be >= 1; got {args.processes}")
  if not 0 <= args.sparsity < 1:
    p.error(f"--sparsity must be in [0, 1); got {args.sparsity}")
  if args.quick:
    args.steps = min(args.steps, 20)
  return args


def _launch(args) -> int:
  """Starts ``args.processes`` copies of this script on 127.0.0.1; kills all on failure/timeout."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  ckpt = args.checkpoint or tempfile.mkdtemp(prefix="jaxprune-multihost-")
  forwarded = [a for a in sys.argv[1:] if not a.startswith("--processes")]
  if "--processes" in sys.argv[1:]:
    i = sys.argv.index("--processes")
    forwarded = sys.argv[1:i] + sys.argv[i + 2:]
  procs = [subprocess.Popen(
      [sys.executable, __file__, *forwarded, "--checkpoint", ckpt,
       "--_child", str(i), str(args.processes), str(port)]) for i in range(args.processes)]
  deadline = time.monotonic() + args.timeout
  codes = [None] * len(procs)
  while any(c is None for c in codes):
    codes = [p.poll() for p in procs]
    if any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
      for p in procs:
        if p.poll() is None:
          p.kill()
      print(f"multihost: a process failed or timed out (exit codes {codes}); stopped all.",
            file=sys.stderr)
      return 1
    time.sleep(0.05)
  return 0


def _setup(args):
  """Environment and jax.distributed, before anything touches devices."""
  flag = "--xla_force_host_platform_device_count"
  if flag not in os.environ.get("XLA_FLAGS", ""):
    count = 2 if args._child else 4  # only affects the host (CPU) platform
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={count}".strip()
  import jax
  if args._child:
    i, n, port = (int(v) for v in args._child)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=i)
  elif args.distributed:
    jax.distributed.initialize()
  return jax


def main(argv=None) -> int:
  args = _args(argv)
  if args.processes > 1 and not args._child:
    return _launch(args)
  jax = _setup(args)
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  root = Path(__file__).resolve().parent.parent
  if (root / "jaxprune" / "__init__.py").is_file():
    sys.path.insert(0, str(root))  # run from a clone without `pip install -e .`
  import jaxprune

  def say(*parts):
    if jax.process_index() == 0:  # one line per event, not one per host
      print(*parts, flush=True)

  n = jax.device_count()
  mesh = Mesh(np.array(jax.devices()), ("model",))
  say(f"{jax.process_count()} process(es), {n} devices ({jax.devices()[0].platform}), "
      f"mesh {dict(mesh.shape)}")

  rng = np.random.default_rng(0)  # same on every process: each keeps only its own shards
  width = 64 * n
  host = {"hidden": {"kernel": rng.standard_normal((32, width)).astype(np.float32) / 6,
                     "bias": np.zeros(width, np.float32)},
          "out": {"kernel": rng.standard_normal((width, 8)).astype(np.float32) / 16}}
  specs = {"hidden": {"kernel": P(None, "model"), "bias": P("model")},
           "out": {"kernel": P("model", None)}}
  make = lambda v, s: jax.make_array_from_callback(v.shape, NamedSharding(mesh, s),
                                                   lambda idx: v[idx])
  params = jax.tree.map(make, host, specs)
  x_host = rng.standard_normal((256, 32)).astype(np.float32)
  y_host = np.tanh(x_host @ rng.standard_normal((32, 8)).astype(np.float32))
  x, y = make(x_host, P()), make(y_host, P())

  def loss_fn(params, x, y):
    h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return jnp.mean((h @ params["out"]["kernel"] - y) ** 2)

  end = max(args.steps * 3 // 4, 1)
  tx = optax.chain(optax.adamw(3e-3, weight_decay=1e-4), jaxprune.prune(
      sparsity=jaxprune.schedules.polynomial(args.sparsity, 0, end), every=max(end // 8, 1),
      select="global"))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for t in range(args.steps):
    params, opt_state, loss = step(params, opt_state, x, y)
    if t % max(args.steps // 5, 1) == 0 or t == args.steps - 1:
      say(f"step {t:4d}  loss {float(loss):.4f}  "
          f"sparsity {float(jaxprune.summary.sparsity(params)['total']):.3f}")
  say("kernel sharding:", params["hidden"]["kernel"].sharding.spec)

  ckpt = Path(args.checkpoint or tempfile.mkdtemp(prefix="jaxprune-multihost-")) / "final"
  state = {"params": params, "opt_state": opt_state}
  jaxprune.checkpoint.save(ckpt, state, force=True, metadata={"steps": args.steps})
  say(f"saved {ckpt} (every process wrote its own shards)")
  rows = lambda path, leaf: NamedSharding(mesh, P("model") if leaf.ndim and
                                          leaf.shape[0] % n == 0 else P()) if leaf.ndim else None
  restored = jaxprune.checkpoint.restore(ckpt, jaxprune.checkpoint.abstract(state, rows))
  same = jax.jit(lambda a, b: jnp.all(jnp.stack([jnp.all(u == v) for u, v in zip(
      jax.tree.leaves(a), jax.tree.leaves(b))])))(restored["params"], params)
  say("restored onto", restored["params"]["hidden"]["kernel"].sharding.spec,
      "- identical:", bool(same))
  return 0 if bool(same) else 1


if __name__ == "__main__":
  sys.exit(main())
