"""On CPU-only runs, keep the memory a step frees in the process, so the next step does not fault it in again.

Measured on the 2-core machine (README "Speed", "On CPU"): XLA:CPU allocates the step's buffers
afresh each execution, about 1.5 GB for DiT-S/2 at batch 8, from the threads of its pool. glibc
serves them from mmap (they are over the mmap threshold) or from per-thread arenas whose heaps it
unmaps once empty, so each step the kernel zero-fills ~380,000 new pages: 0.7-1.1 s of system time
in a 2.4 s step. Three `mallopt` settings stop that, after which a step takes no page faults:
  M_ARENA_MAX 1        every thread allocates from the main heap, which is not unmapped when empty;
  M_MMAP_MAX 0         large blocks come from that heap too, not from mmap/munmap each time;
  M_TRIM_THRESHOLD -1  freed memory at the heap's top is kept (-1: never trim, `man mallopt`).
The cost is that the process keeps its peak heap until it exits, which a training or sampling run
reaches again every step anyway.

Only where jax runs on the CPU alone (JAX_PLATFORMS=cpu, which `platforms.choose` sets on a host
without accelerators): on a TPU or GPU host the step's buffers live on the device, and one malloc
arena could slow a multi-threaded input pipeline. glibc only (not musl, not macOS). It must run
before jax starts its CPU backend, whose threads would otherwise already hold their own arenas.
DIT_JAX_CPU_MALLOC=0 turns it off.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # <malloc.h>
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
ENV = "DIT_JAX_CPU_MALLOC"


def wanted(environ=os.environ) -> bool:
    """Whether this process runs jax on the CPU alone and the user has not turned the setting off."""
    platforms = {p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()}
    return platforms == {"cpu"} and environ.get(ENV, "1") != "0"


def keep_freed_memory(environ=os.environ) -> bool:
    """Apply SETTINGS to this process's glibc malloc where `wanted`; returns whether they were applied."""
    if not wanted(environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc's own symbol: absent from musl and macOS libc)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
