"""`dit-jax train`: its own flags, then the config: `--config=FILE[:ARG]` and typed `--config.FIELD=VALUE`
overrides (dit_jax.cli.config_args). Exit codes: TRAIN_EXIT_CODES (dit_jax/exit_codes.py)."""

from __future__ import annotations

import argparse

from dit_jax.argparsing import count
from dit_jax.exit_codes import BadInput

NAME = "train"
HELP = "train (default: the laptop demo); --config configs/dit.py:XL/2 --workdir DIR --config.batch_size=..."
CONFIG = "demo.py"        # the default config file: `dit-jax train` alone trains the demo
ADD_HELP = False          # --help lists the config's fields too (the config is loaded first)
HELP_FLAGS = ("-h", "--help", "--helpfull", "--helpshort")
TRAIN_EXIT_CODES = """Exit codes: 0 finished, 75 preempted with a checkpoint saved (rerun to resume),
2 bad input, 3 diverged, 130 interrupted (Ctrl-C), 1 any other failure."""


def _boolean(text: str) -> bool:
    """absl's values of a boolean flag: --NAME=true/false (1/0, yes/no)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "t", "y"):
        return True
    if value in ("false", "0", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _switch(p, name: str, help: str) -> None:
    """--NAME, --NAME=false and --noNAME (absl's spellings, kept from when train parsed with absl); None
    when not given."""
    p.add_argument(f"--{name}", dest=name, nargs="?", type=_boolean, const=True, default=None, metavar="BOOL",
                   help=help)
    p.add_argument(f"--no{name}", dest=name, action="store_const", const=False, help=argparse.SUPPRESS)


def add_arguments(p) -> None:
    p.add_argument("--workdir", default="workdir/demo",
                   help="run directory: checkpoints, samples, metrics (resumed if present)")
    _switch(p, "distributed", "call jax.distributed.initialize() (multi-host; auto-detects TPU pods and SLURM, "
            "else set --coordinator/--num_processes/--process_id)")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host without auto-detection)")
    p.add_argument("--num_processes", type=count(1), default=None, help="number of processes (multi-host)")
    p.add_argument("--process_id", type=count(0), default=None, help="this process's index (multi-host)")
    p.add_argument("--distributed_timeout", type=count(1), default=None, help="seconds to wait for all processes to "
                   "join jax.distributed.initialize before failing (default 300)")
    p.add_argument("--local_device_ids", default=None, help="the accelerators this process drives, e.g. 0,1,2,3 "
                   "(one process per node driving all its GPUs; SLURM detection alone gives one GPU per task)")
    _switch(p, "dry_run", "check everything a run checks before its first step and print its plan (mesh, batch per "
            "device and host, steps, epochs, checkpoints, evaluations); writes nothing and joins no other process. "
            "Also spelled --dry-run")
    p.add_argument("--dry-run", dest="dry_run", action="store_const", const=True, help=argparse.SUPPRESS)
    _switch(p, "check_files", "with --dry_run: check the dataset, the files the config names and the workdir "
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


def _device_ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        pass
    raise ValueError(f"--local_device_ids takes comma-separated integers like 0,1,2,3, got {text!r}")


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
    local_ids = _device_ids(args.local_device_ids)
    if args.distributed or args.coordinator:
        from dit_jax.train.distributed import join
        join(args.coordinator, args.num_processes, args.process_id, local_ids, args.distributed_timeout or 300)
    elif local_ids is not None or args.distributed_timeout is not None:
        raise ValueError("--local_device_ids and --distributed_timeout apply to multi-host runs: add --distributed")
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

