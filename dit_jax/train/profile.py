"""XProf / TensorBoard profiles of a few training steps (config.profile).

The trace goes to WORKDIR/profile/plugins/profile/<run>/<host>.xplane.pb, which TensorBoard's
profile plugin and XProf open (`xprof --logdir WORKDIR/profile`). Each step is annotated with its
step number, so the trace viewer and the overview page split the timeline per step.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import jax


def check(config) -> list[str]:
    p = config.profile
    problems = []
    if p.num_steps < 0 or p.start_step < 0:
        problems.append(f"profile.start_step and profile.num_steps must be >= 0, got {p.start_step}, {p.num_steps}")
    try:
        parse_hosts(p.hosts)
    except ValueError as e:
        problems.append(str(e))
    return problems


def parse_hosts(spec: str) -> tuple[int, ...] | None:
    """'0' or '0,3' -> those process indices; 'all' -> None (every host)."""
    if spec.strip() == "all":
        return None
    try:
        return tuple(int(h) for h in spec.split(","))
    except ValueError:
        raise ValueError(f"profile.hosts must be 'all' or comma-separated process indices like '0,1', "
                         f"got {spec!r}") from None


class StepProfiler:
    """Traces steps [first + start_step, first + start_step + num_steps) of this process's run.

    Counting from the first step this process runs (not from step 0) profiles a resumed run too,
    and start_step >= 1 keeps the compilation out of the trace.
    """

    def __init__(self, profile_config, workdir: str, first_step: int):
        hosts = parse_hosts(profile_config.hosts)
        on_this_host = hosts is None or jax.process_index() in hosts
        self.begin = first_step + profile_config.start_step
        self.end = self.begin + profile_config.num_steps if on_this_host and profile_config.num_steps else -1
        self.logdir = os.path.join(workdir, "profile")
        self.active = False

    def step(self, step: int, state):
        """Context for the work of `step` (0-based); starts and stops the trace at the window's edges."""
        if step == self.end and self.active:
            self.stop(state)
        if step == self.begin and self.end > step:
            jax.profiler.start_trace(self.logdir)
            self.active = True
        if not self.active:
            return nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def stop(self, state) -> None:
        """Ends the trace once the traced steps have run on the devices (dispatch is asynchronous)."""
        if self.active:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
