"""Where a training run's wall time goes, and when a time-based checkpoint is due.

The loop's wall time between two log lines splits into: the first call of the train step (tracing
and compiling it, or loading it from the persistent cache), waiting for the next batch, blocking on
checkpoint saves, evaluations and sample grids ("other"), and the rest: training. img/s and MFU
count only training time, so they measure the step, not the start-up or the saves. The ETA adds
the input wait back (every remaining step waits for its batch too) but not the one-off compile:
a 1-minute job right after a 1-hour compile shows an ETA of about a minute.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

EXCLUDED = ("compile", "input", "checkpoint", "other")


class StepTimer:
    """Wall time of the loop since the last `window()`, split by what it was spent on."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self._start = clock()
        self.spent = dict.fromkeys(EXCLUDED, 0.0)

    @contextmanager
    def measure(self, kind: str):
        t0 = self.clock()
        try:
            yield
        finally:
            self.add(kind, since=t0)

    def add(self, kind: str, since: float) -> None:
        """Counts the time from `since` (a reading of self.clock) to now as `kind`."""
        self.spent[kind] += self.clock() - since

    def window(self) -> dict:
        """{'wall', 'train', *EXCLUDED} seconds since the previous call; starts the next window."""
        now = self.clock()
        out = {**self.spent, "wall": now - self._start}
        out["train"] = max(out["wall"] - sum(self.spent.values()), 1e-9)
        self._start, self.spent = now, dict.fromkeys(EXCLUDED, 0.0)
        return out


def log_fields(window: dict, steps: int, remaining: int, batch_size: int, flops_per_image: float,
               peak_flops_total: float) -> dict:
    """The metrics of a log window of `steps` steps: img/s and MFU over training time only, the
    seconds spent waiting for input and saving, compile time when this window had the first step."""
    img_s = steps * batch_size / window["train"]
    out = {"img_per_s": img_s, "input_wait_s": window["input"], "checkpoint_s": window["checkpoint"],
           "eta_s": remaining * (window["train"] + window["input"]) / max(steps, 1)}
    if window["compile"]:
        out["compile_s"] = window["compile"]
    if peak_flops_total:
        out["mfu"] = img_s * flops_per_image / peak_flops_total
    return out


# For tests only, never for a run: this process's SaveClock runs this many times as fast as real
# time, so that a test can make one host due and not the others, and see whose clock decides
# (tests/test_operations.py). Unset (or 1): real time.
TEST_CLOCK_RATE = "DIT_JAX_TEST_CLOCK_RATE"


def _save_clock_source():
    rate = float(os.environ.get(TEST_CLOCK_RATE, "1"))
    return time.monotonic if rate == 1 else (lambda: rate * time.monotonic())


class SaveClock:
    """Is a time-based checkpoint due? `every_minutes` 0 means never.

    Hosts must agree on the step they save at (a save is a collective), but their clocks differ: on
    several hosts the decision is process 0's, broadcast to all at steps every host reaches
    together (the log steps), so it costs one tiny collective per log line, not per step.
    """

    def __init__(self, every_minutes: float, clock=None):
        self.every_s = 60.0 * every_minutes
        self.clock = clock or _save_clock_source()
        self.last = self.clock()

    def due(self, at_sync_point: bool, process_count: int) -> bool:
        if not self.every_s:
            return False
        mine = self.clock() - self.last >= self.every_s
        if process_count == 1:
            return mine
        if not at_sync_point:
            return False
        from jax.experimental import multihost_utils
        return bool(multihost_utils.broadcast_one_to_all(mine))

    def saved(self) -> None:
        self.last = self.clock()
