"""`dit-jax compile`: will it fit? The train step AOT-compiled for a TPU topology from this host."""

from __future__ import annotations

from dit_jax.argparsing import count, number

NAME = "compile"
HELP = ("will it fit? AOT-compile the train step for a TPU topology from this host: --config configs/dit.py:XL/2 "
        "--topology v5p-8 [--num-slices N] (needs libtpu)")
DESCRIPTION = "Will it fit? The real sharded train step compiled ahead of time for a TPU topology, from a CPU host."
EPILOG = ("the run: --config=FILE[:ARG] (default configs/dit.py, i.e. DiT-XL/2 at 256 px: the paper's recipe, where "
          "`dit-jax train` defaults to the laptop demo) and any --config.FIELD=VALUE, as `dit-jax train` takes them "
          "(`dit-jax train --config=FILE --help` lists the fields)")
CONFIG = "dit.py"


def add_arguments(p) -> None:
    p.add_argument("--topology", required=True, help="TPU slice, e.g. v5p-8, v5p-256, v5e-8, v6e-64, v4-32")
    p.add_argument("--num-slices", type=count(1), default=1, help="slices joined over DCN (set mesh.dcn_data/dcn_fsdp)")
    p.add_argument("--hbm-gib", type=number(0), default=0.0, help="memory per chip to fit in (default: the target's)")
    p.add_argument("--max-tries", type=count(0), default=4, help="compiles of other settings when it does not fit")


def run(args) -> int:
    from dit_jax.cli import config_args
    from dit_jax.jobs.compile import check_fit
    config = config_args.load(args, CONFIG, "dit-jax compile")
    return check_fit(config, args.topology, args.num_slices, args.hbm_gib, args.max_tries)
