"""On CPU-only runs, keep the memory a step frees in the process, so the next step does not fault it in again.

Measured on the 2-core machine (docs/speed.md, "Page faults"): XLA:CPU allocates a step's buffers
afresh at each execution, from the threads of its pool: about 1.5 GB for DiT-S/2 at batch 8. With
glibc's defaults they come from mmap (they are over the mmap threshold) or from per-thread arenas,
whose extra heaps glibc unmaps as soon as they are empty. So at every step the kernel zero-fills
about 380,000 new pages: 0.7-1.1 s of system time in a 2.4 s step, on both cores. Three `mallopt`
settings stop that; a step then takes no page faults at all:
  M_ARENA_MAX 1        every thread allocates from the main heap, which is never unmapped (with 2
                       arenas a step took 0 to 190,000 faults, by which threads shared one; with 3,
                       126,000);
  M_MMAP_MAX 0         large blocks come from the heaps too, not from a fresh mmap each time;
  M_TRIM_THRESHOLD -1  freed memory at a heap's top is kept (-1: never trim, `man mallopt`).
The costs: the process keeps what it frees until it exits, and the heap fragments: a step's 1.5 GB
of temporaries does not always fit back into the hole it left, so the heap grows in jumps of that
size before it settles (DiT-S/2, batch 8: 4.25 GB resident against 2.67 GB without the setting in
one run, 7.2 GB in another). And compiling takes 20-35% longer (DiT-S/2's step: 9.8 s against
7.2 s), as the compiler's threads now share one heap's lock. A step gains 0.1-0.5 s, so a run of
more than a handful of steps comes out ahead; the test suite, which compiles far more than it
steps, runs without it (tests/conftest.py), but for the test that checks it.

Only where jax runs on the CPU alone (JAX_PLATFORMS=cpu, which `platforms.choose` sets on a host
without accelerators): on a TPU or GPU host the step's buffers live on the device, and fewer malloc
arenas could slow a multi-threaded input pipeline. glibc only (not musl, not macOS). It must run
before jax starts its CPU backend: the backend's threads would otherwise already hold their own
arenas. DIT_JAX_CPU_MALLOC=0 turns it off.
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
