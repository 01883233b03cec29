"""`dit-jax train`: its own flags, then the config: `--config=FILE[:ARG]` and typed `--config.FIELD=VALUE`
overrides (dit_jax.cli.config_args). Exit codes: TRAIN_EXIT_CODES (dit_jax/exit_codes.py)."""

from __future__ import annotations

import argparse

from dit_jax.argparsing import count
from dit_jax.cli.distributed_args import add_distributed_arguments, join_if_asked, switch
from dit_jax.exit_codes import BadInput

NAME = "train"
HELP = "train (default: the laptop demo); --config configs/dit.py:XL/2 --workdir DIR --config.batch_size=..."
CONFIG = "demo.py"        # the default config file: `dit-jax train` alone trains the demo
ADD_HELP = False          # --help lists the config's fields too (the config is loaded first)
HELP_FLAGS = ("-h", "--help", "--helpfull", "--helpshort")
TRAIN_EXIT_CODES = """Exit codes: 0 finished, 75 preempted with a checkpoint saved (rerun to resume),
2 bad input, 3 diverged, 130 interrupted (Ctrl-C), 1 any other failure."""


def add_arguments(p) -> None:
    p.add_argument("--workdir", default="workdir/demo",
                   help="run directory: checkpoints, samples, metrics (resumed if present)")
    add_distributed_arguments(p)
    switch(p, "dry_run", "check everything a run checks before its first step and print its plan (mesh, batch per "
           "device and host, steps, epochs, checkpoints, evaluations); writes nothing and joins no other process. "
           "Also spelled --dry-run")
    p.add_argument("--dry-run", dest="dry_run", action="store_const", const=True, help=argparse.SUPPRESS)
    switch(p, "check_files", "with --dry_run: check the dataset, the files the config names and the workdir "
           "(default); --nocheck_files checks the config, mesh and batch only (a launch machine that does not "
           "hold the hosts' disks)")
    p.add_argument("--devices", type=count(1), default=None, help="with --dry_run: plan for this many devices (all "
                   "hosts, all slices); default: this machine's")


def _help(parser, config) -> str:
    """The flags, and every config field (of --config, with the overrides given) with its value and description."""
    from dit_jax.cli import config_args
    lines = ["usage: dit-jax train [--config=FILE[:ARG]] [--workdir=DIR] [--config.FIELD=VALUE ...] [flags]", "",
             "flags:", "  --config: config file, e.g. configs/dit.py:XL/2 (default: configs/demo.py)"]
    for action in parser._actions:
        if action.help != argparse.SUPPRESS and action.option_strings:
            default = "" if action.default is None else f" (default: {action.default})"
            lines.append(f"  {action.option_strings[0]}: {action.help}{default}")
    lines += ["", "config fields (set any with --config.FIELD=VALUE; `dit-jax train --config=FILE --help` lists "
              "that config's):"]
    return "\n".join(lines + config_args.describe(config))


def run(args) -> int:
    from dit_jax.cli import config_args
    show_help = any(a in HELP_FLAGS for a in args.config_args)
    args.config_args = [a for a in args.config_args if a not in HELP_FLAGS]
    config = config_args.load(args, CONFIG, "dit-jax train")
    if show_help:
        print(_help(args.parser, config) + "\n\n" + TRAIN_EXIT_CODES)
        return 0
    if args.dry_run:
        return _dry_run(args, config)
    if args.devices is not None or args.check_files is not None:
        raise ValueError("--devices and --check_files apply to a dry run: add --dry_run")
    from dit_jax.workdir_lock import workdir_problem
    problem = workdir_problem(args.workdir)
    if problem:
        raise ValueError(problem)
    join_if_asked(args)
    from dit_jax.train.loop import train_and_evaluate
    train_and_evaluate(config, args.workdir)  # a run that stops early raises (dit_jax.cli.main maps it)
    return 0


def _dry_run(args, config) -> int:
    import jax

    from dit_jax.train.plan import dry_run
    devices = args.devices or jax.device_count()
    hosts = args.num_processes or jax.process_count()
    from dit_jax.train.plan import UNCHECKED
    lines = dry_run(config, args.workdir, devices=devices, hosts=hosts, files=args.check_files is not False)
    for line in lines:
        print(line)
    if any(line.startswith(UNCHECKED) for line in lines):
        raise BadInput("the dry run could not make every check (the 'not checked:' line above): run it where the "
                       "store is reachable, or pass --nocheck_files to check the rest only; nothing was written")
    print("dry run: every check passed; nothing was written")
    return 0

