"""The multi-host flags that `dit-jax train` and `dit-jax sample --num-samples` share, spelled as absl
spelled them when train parsed with absl (--distributed, --nodistributed, --num_processes, ...), so
that one launch script starts either command on every host."""

from __future__ import annotations

import argparse

from dit_jax.argparsing import count


def boolean(text: str) -> bool:
    """absl's values of a boolean flag: --NAME=true/false (1/0, yes/no)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "t", "y"):
        return True
    if value in ("false", "0", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def switch(p, name: str, help: str) -> None:
    """--NAME, --NAME=false and --noNAME (absl's spellings, kept from when train parsed with absl); None
    when not given."""
    p.add_argument(f"--{name}", dest=name, nargs="?", type=boolean, const=True, default=None, metavar="BOOL",
                   help=help)
    p.add_argument(f"--no{name}", dest=name, action="store_const", const=False, help=argparse.SUPPRESS)


def add_distributed_arguments(p) -> None:
    switch(p, "distributed", "call jax.distributed.initialize() (multi-host; auto-detects TPU pods and SLURM, "
           "else set --coordinator/--num_processes/--process_id)")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host without auto-detection)")
    p.add_argument("--num_processes", type=count(1), default=None, help="number of processes (multi-host)")
    p.add_argument("--process_id", type=count(0), default=None, help="this process's index (multi-host)")
    p.add_argument("--distributed_timeout", type=count(1), default=None, help="seconds to wait for all processes to "
                   "join jax.distributed.initialize before failing (default 300)")
    p.add_argument("--local_device_ids", default=None, help="the accelerators this process drives, e.g. 0,1,2,3 "
                   "(one process per node driving all its GPUs; SLURM detection alone gives one GPU per task)")


def multi_host(args) -> bool:
    """Whether the command line asks to join other processes."""
    return bool(args.distributed or args.coordinator)


def device_ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        pass
    raise ValueError(f"--local_device_ids takes comma-separated integers like 0,1,2,3, got {text!r}")


def join_if_asked(args) -> None:
    """jax.distributed.initialize when the flags ask for it (before anything starts a backend); the
    flags that only mean something on several hosts are refused without it."""
    local_ids = device_ids(args.local_device_ids)
    if multi_host(args):
        from dit_jax.train.distributed import join
        join(args.coordinator, args.num_processes, args.process_id, local_ids, args.distributed_timeout or 300)
    elif local_ids is not None or args.distributed_timeout is not None:
        raise ValueError("--local_device_ids and --distributed_timeout apply to multi-host runs: add --distributed")
