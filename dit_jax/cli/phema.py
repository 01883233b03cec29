"""`dit-jax phema`: post-hoc EMA, the weights of any EMA length from a run's snapshots (EDM2)."""

from __future__ import annotations

from dit_jax.argparsing import count, existing_dir, number, output_path

NAME = "phema"
HELP = ("post-hoc EMA: reconstruct the weights of any EMA length (relative std) from the snapshots of a run trained "
        "with config.phema (EDM2)")


def add_arguments(ph) -> None:
    ph.add_argument("--workdir", required=True, type=existing_dir, help="the training run (its phema/ snapshots)")
    ph.add_argument("--std", required=True, type=number(0, strict=True),
                    help="relative standard deviation of the EMA profile, in (0, 0.289), e.g. 0.05")
    ph.add_argument("--out", required=True, type=output_path, help="output weights directory (for sample --weights)")
    ph.add_argument("--step", type=count(1), default=None, help="reconstruct at this snapshot's step (default: the last)")
    ph.add_argument("--max-fit-error", type=number(0), default=0.1,
                    help="refuse a std whose reconstructed EMA response is further than this (relative L2) from the "
                         "exact one (default 0.1)")
    ph.add_argument("--force", action="store_true", help="replace an existing weights directory")


def run(args) -> int:
    """EDM2's reconstruct_phema.py: a least-squares mix of the snapshots, written as a weights directory."""
    from dit_jax.jobs.phema import reconstruct
    reconstruct(args.workdir, args.std, args.out, step=args.step, max_fit_error=args.max_fit_error,
                force=args.force)
    return 0
