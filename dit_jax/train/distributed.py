"""Joining the other processes of a multi-host run (jax.distributed), before any backend starts."""

from __future__ import annotations

import sys


def join(coordinator: str | None, num_processes: int | None, process_id: int | None,
         local_device_ids: list[int] | None, timeout: int) -> None:
    """jax.distributed.initialize, announced: a process that waits in vain is aborted by jax (exit
    134, SIGABRT) after `timeout` seconds."""
    import jax
    print(f"joining jax.distributed: waiting up to {timeout} s for all processes (--distributed_timeout)",
          file=sys.stderr, flush=True)
    jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids,
                               initialization_timeout=timeout)
