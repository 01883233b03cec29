"""Goodput: where a run's wall time went, across every restart, in a ledger kept in the workdir.

Each process lifetime of a run is one *session* in WORKDIR/goodput.json (local or gs://, rewritten
whole at each log line by process 0). A session's wall time splits into: training steps that made
progress ("train"), steps run again because a restart resumed from an earlier checkpoint ("rerun":
the work a preemption or crash lost), compiling the step, waiting for input, checkpoint saves,
evaluations and sample grids, and start-up (imports, restoring the checkpoint, building the
programs). The time between one session's last entry and the next session's start is "down" (the
job was not running: rescheduling after a preemption or a crash) unless the earlier session finished
its run (reached total_steps): then nobody was waiting for it, and the gap is "idle", kept apart and
left out of the wall time (a finished run rerun a week later has not lost a week to restarts).
Goodput is progress-making training time over the rest, as MaxText's goodput monitor reports it.
"""

from __future__ import annotations

import json
import time

from dit_jax import storage

NAME = "goodput.json"
CATEGORIES = ("train", "rerun", "compile", "input", "checkpoint", "evaluation", "startup", "down")


def _zero() -> dict:
    return dict.fromkeys(CATEGORIES, 0.0)


def summarize(sessions: list[dict]) -> dict:
    """Totals over sessions: seconds per category, the goodput fraction and the steps run again."""
    seconds, idle = _zero(), 0.0
    for i, s in enumerate(sessions):
        for k, v in s["seconds"].items():
            seconds[k] += v
        if i:  # the gap since the previous session's last entry: the job was not running
            gap = max(0.0, s["started"] - sessions[i - 1]["updated"])
            if sessions[i - 1].get("finished"):
                idle += gap  # the run was done: no one waited for it
            else:
                seconds["down"] += gap
    total = sum(seconds.values())
    return {"goodput": seconds["train"] / total if total > 0 else 0.0, "seconds": seconds, "wall_s": total,
            "idle_s": idle, "rerun_steps": sum(s.get("rerun_steps", 0) for s in sessions),
            "sessions": len(sessions)}


def _read_sessions(path) -> list[dict]:
    """The sessions of a ledger file; none (a ledger starts afresh, with a warning) if it is torn,
    damaged or foreign."""
    try:
        sessions = json.loads(storage.read_bytes(path))["sessions"]
        for s in sessions:
            _check_session(s)
        return sessions
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        print(f"warning: the goodput ledger {path} is damaged: it starts afresh from this session", flush=True)
        return []


def _check_session(s: dict) -> None:
    """Raise ValueError/TypeError/KeyError unless `s` has the fields `summarize` and `begin` read."""
    if not set(s["seconds"]) <= set(CATEGORIES):
        raise ValueError(f"unknown categories {sorted(set(s['seconds']) - set(CATEGORIES))}")
    float(s["started"]), float(s["updated"]), int(s.get("rerun_steps", 0))
    [float(v) for v in s["seconds"].values()]
    if not (s["last_step"] is None or isinstance(s["last_step"], int)):
        raise TypeError("last_step")


class Ledger:
    """This session's entry in the run's ledger; only process 0 writes (`enabled`)."""

    def __init__(self, workdir: str, enabled: bool = True, clock=time.time):
        self.path = storage.join(workdir, NAME)
        self.enabled, self.clock = enabled, clock
        self.sessions: list[dict] = []
        if enabled and storage.exists(self.path):
            self.sessions = _read_sessions(self.path)
        now = clock()
        self.session = {"started": now, "updated": now, "start_step": None, "last_step": None, "rerun_steps": 0,
                        "seconds": _zero()}
        self._rerun_until = 0
        self._accounted = 0.0  # session seconds already put in a category

    def begin(self, start_step: int) -> None:
        """The session resumes at `start_step`: steps up to the furthest step any earlier session
        reached are run again."""
        furthest = max((s["last_step"] or 0 for s in self.sessions), default=0)
        self._rerun_until = max(furthest, start_step)
        self.session.update(start_step=start_step, last_step=start_step, rerun_steps=max(0, furthest - start_step))

    def add(self, window: dict, first_step: int, last_step: int) -> None:
        """A StepTimer window that ran steps (first_step, last_step]: its training time is split
        between progress and re-runs by the share of its steps past the furthest earlier progress."""
        seconds = self.session["seconds"]
        steps = max(last_step - first_step, 1)
        rerun_share = max(0, min(last_step, self._rerun_until) - first_step) / steps
        seconds["rerun"] += window["train"] * rerun_share
        seconds["train"] += window["train"] * (1 - rerun_share)
        for key, category in (("compile", "compile"), ("input", "input"), ("checkpoint", "checkpoint"),
                              ("other", "evaluation")):
            seconds[category] += window[key]
        self._accounted += window["wall"]
        self.session["last_step"] = last_step

    def update(self, finished: bool = False) -> dict:
        """Close the books up to now (what no window covered is start-up), write the ledger, return the summary.
        finished: this session reached the run's total_steps (the gap before a next session is idle)."""
        now = self.clock()
        self.session["finished"] = finished
        self.session["updated"] = now
        self.session["seconds"]["startup"] = max(0.0, (now - self.session["started"]) - self._accounted)
        summary = summarize(self.sessions + [self.session])
        if self.enabled:
            storage.write_bytes_atomic(self.path, json.dumps({"sessions": self.sessions + [self.session],
                                                              "summary": summary}, indent=1).encode())
        return summary

    def describe(self, summary: dict) -> str:
        s = summary["seconds"]
        lost = s["rerun"] + s["down"]
        return (f"goodput {summary['goodput']:.1%} of {summary['wall_s'] / 3600:.2f} h over {summary['sessions']} "
                f"session(s): training {s['train']:.0f} s, lost to restarts {lost:.0f} s ({summary['rerun_steps']} "
                f"steps run again), compile {s['compile']:.0f} s, input {s['input']:.0f} s, saves {s['checkpoint']:.0f} s, "
                f"evaluations {s['evaluation']:.0f} s, start-up {s['startup']:.0f} s"
                + (f"; idle between finished and resumed sessions {summary['idle_s']:.0f} s, not counted"
                   if summary.get("idle_s") else ""))
