"""Trains the reference byte-level GPT on the standard library's sources and saves it.

    python examples/train_lm.py --out lm_checkpoint            # 4 x 256, a few CPU minutes
    python examples/train_lm.py --quick --out /tmp/lm          # tiny model, seconds

Deterministic: fixed file list, init key and batch order. Prints the validation perplexity
(bytes of held-out stdlib files). ``examples/prune_lm.py --checkpoint DIR`` prunes the result.
"""

from __future__ import annotations

import argparse
import time

import lm


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="lm_checkpoint", help="checkpoint folder")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--budget", type=float, default=None,
                      help="stop after this many seconds (makes the result machine-dependent)")
  parser.add_argument("--quick", action="store_true", help="tiny model, seconds (smoke test)")
  args = parser.parse_args(argv)
  if args.quick:
    cfg, steps, max_bytes, batch = lm.Config(layers=2, width=64, heads=2, context=32), 30, 200_000, 16
  else:
    cfg = lm.Config(layers=args.layers, width=args.width)
    steps, max_bytes, batch = args.steps, None, args.batch
  train, valid = lm.corpus(max_bytes)
  print(f"corpus: {len(train) / 1e6:.1f} MB train, {len(valid) / 1e6:.2f} MB validation")
  start = time.perf_counter()
  model, params = lm.train(cfg, train, steps=steps, batch=batch, budget_s=args.budget,
                           log_every=10 if args.quick else 100)
  seconds = time.perf_counter() - start
  val = lm.windows(valid, 32 if args.quick else 256, cfg.context, seed=1234)
  print(f"trained {cfg} in {seconds:.0f} s; validation perplexity "
        f"{lm.perplexity(model, params, val):.3f}")
  lm.save(args.out, cfg, params)
  print(f"saved to {args.out}")


if __name__ == "__main__":
  main()
