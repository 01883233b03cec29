"""`dit-jax export-weights`: a training run's weights as a weights directory."""

from __future__ import annotations

from dit_jax.argparsing import count, existing_dir, output_dir

NAME = "export-weights"
HELP = "a training run's weights as a weights directory (for sample --weights, init_weights, convert --to-torch)"


def add_arguments(w) -> None:
    w.add_argument("--workdir", required=True, type=existing_dir, help="the training run")
    w.add_argument("--out", required=True, type=output_dir, help="output weights directory")
    kind = w.add_mutually_exclusive_group()
    kind.add_argument("--ema", action="store_true", help="the EMA weights (the default; what the paper samples)")
    kind.add_argument("--raw", action="store_true", help="the raw (non-EMA) training weights")
    w.add_argument("--step", type=count(0), default=None, help="checkpoint step (default: the latest)")
    w.add_argument("--force", action="store_true", help="replace an existing weights directory (never a training run "
                   "or a directory with other files)")


def run(args) -> int:
    from dit_jax.jobs.export_weights import export_weights
    path, step = export_weights(args.workdir, args.out, args.step, raw=args.raw, force=args.force)
    print(f"wrote the {'raw' if args.raw else 'EMA'} weights of {args.workdir} at step {step} to {path}")
    return 0
