"""What `dit-jax train`'s exit code tells a retry loop, and the exceptions that carry each code.

    0   finished: total_steps reached (and the final evaluation written)
    2   bad input: the config, a flag or a path is wrong; nothing was lost, fix it and rerun
    3   diverged: the loss became NaN or infinite; rerunning resumes into the same divergence
    75  preempted: a checkpoint was saved; rerun the same command to resume (EX_TEMPFAIL, "try again")
    1   any other failure (a crash with its traceback); the last regular checkpoint is intact, so a
        bounded number of reruns is reasonable (a lost host, a coordinator timeout)

The launch recipes in tools/launch/ rerun on 75 (and, a few times, on 1) and stop on 0, 2 and 3.
Code raises these exceptions where the event happens; `cmd_train` maps them with `exit_code`.
"""

from __future__ import annotations

FINISHED = 0
FAILED = 1
BAD_INPUT = 2
DIVERGED = 3
PREEMPTED = 75


class RunStopped(Exception):
    """A training run ended before total_steps for a reason its exit code names."""
    exit_code = FAILED


class Preempted(RunStopped):
    """SIGTERM (a preemption notice) arrived; the checkpoint at `args[0]` is complete."""
    exit_code = PREEMPTED


class Diverged(RunStopped):
    """The loss is no longer finite."""
    exit_code = DIVERGED


def exit_code(error: BaseException) -> int | None:
    """The code for an exception that ends a run, or None for one the caller handles otherwise.

    FloatingPointError is what `jax_debug_nans` raises: a divergence as well.
    """
    if isinstance(error, RunStopped):
        return error.exit_code
    if isinstance(error, FloatingPointError):
        return DIVERGED
    return None
