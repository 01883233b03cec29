"""Which jax platforms a `dit-jax` command starts, chosen before jax initialises its backends.

With libtpu installed (the `tpu` and `test` extras) and no TPU, jax tries the TPU backend first and
libtpu prints about five lines of errors ("Failed to find host bounds ...", "unexpected worker
hostname ...") before jax falls back to the CPU: a newcomer reads them as a failure. Where this
host has no accelerator at all (no TPU, GPU or other accelerator device files, no TPU environment)
the CPU is the only platform jax could use, so the command asks for it alone. Anything else (a TPU
VM, a GPU host, JAX_PLATFORMS set by the user) is left to jax. `dit-jax compile` still reaches
libtpu's topology descriptions: they need libtpu, not a TPU backend.
"""

from __future__ import annotations

import glob
import os
import sys

# Device files of accelerators jax drives: TPU VMs (/dev/accel*, or /dev/vfio/* on newer ones),
# NVIDIA GPUs, AMD GPUs (ROCm).
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/*", "/dev/nvidia*", "/dev/kfd")
# Set on TPU hosts (and by TPU pods' launchers) even where the device files are not visible.
TPU_ENV = ("TPU_NAME", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "TPU_PROCESS_BOUNDS",
           "TPU_CHIPS_PER_PROCESS_BOUNDS", "TPU_VISIBLE_CHIPS", "CLOUD_TPU_TASK_ID")


def chosen_platforms(environ=os.environ, devices=ACCELERATOR_DEVICES, find=glob.glob) -> str | None:
    """'cpu' where this host has nothing but a CPU for jax, else None (leave the choice to jax).
    JAX_PLATFORMS set to anything but '' is the user's choice and is kept."""
    if environ.get("JAX_PLATFORMS", "") or not sys.platform.startswith("linux"):  # (macOS: jax-metal)
        return None
    if any(environ.get(name) for name in TPU_ENV):
        return None
    if any(find(pattern) for pattern in devices):
        return None
    return "cpu"


def choose() -> str | None:
    """Apply `chosen_platforms` to this process (and the processes it starts); returns what was set."""
    platforms = chosen_platforms()
    if platforms is None:
        return None
    os.environ["JAX_PLATFORMS"] = platforms
    if "jax" in sys.modules:  # imported already (dit_jax imports it): its config read the variable then
        sys.modules["jax"].config.update("jax_platforms", platforms)
    return platforms
