"""The goodput ledger across sessions (dit_jax/train/goodput.py): the gap after a crash or preemption is
time lost to restarts; the gap after a session that finished its run is idle, and not counted."""

import json

import pytest

from dit_jax.train.goodput import NAME, Ledger


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _session(workdir, clock, *, start, steps, seconds, finished):
    """A session that trains `steps` steps from `start` in `seconds` of training time and then ends."""
    ledger = Ledger(str(workdir), clock=clock)
    ledger.begin(start)
    clock.now += seconds
    ledger.add({"train": seconds, "compile": 0.0, "input": 0.0, "checkpoint": 0.0, "other": 0.0, "wall": seconds},
               start, start + steps)
    return ledger.update(finished=finished)


def test_the_gap_after_a_finished_run_is_idle_not_lost(tmp_path):
    clock = Clock()
    _session(tmp_path, clock, start=0, steps=10, seconds=100.0, finished=True)
    clock.now += 7 * 24 * 3600  # rerun a week later: nothing left to train
    summary = _session(tmp_path, clock, start=10, steps=0, seconds=0.0, finished=True)
    assert summary["seconds"]["down"] == 0
    assert summary["idle_s"] == pytest.approx(7 * 24 * 3600)
    assert summary["wall_s"] == pytest.approx(100.0) and summary["goodput"] == pytest.approx(1.0)
    line = Ledger(str(tmp_path), clock=clock).describe(summary)
    assert "lost to restarts 0 s" in line and "idle between finished and resumed sessions 604800 s, not counted" in line
    with open(tmp_path / NAME) as f:
        assert [s["finished"] for s in json.load(f)["sessions"]] == [True, True]


def test_control_the_gap_after_a_crash_is_lost_to_restarts(tmp_path):
    clock = Clock()
    _session(tmp_path, clock, start=0, steps=10, seconds=100.0, finished=False)  # crashed or preempted
    clock.now += 300.0  # rescheduled five minutes later
    summary = _session(tmp_path, clock, start=10, steps=10, seconds=100.0, finished=True)
    assert summary["seconds"]["down"] == pytest.approx(300.0) and summary["idle_s"] == 0
    assert summary["goodput"] == pytest.approx(200.0 / 500.0)
    assert "lost to restarts 300 s" in Ledger(str(tmp_path), clock=clock).describe(summary)


def test_a_ledger_written_before_sessions_said_finished_counts_its_gaps_as_before(tmp_path):
    clock = Clock()
    _session(tmp_path, clock, start=0, steps=10, seconds=100.0, finished=True)
    with open(tmp_path / NAME) as f:
        ledger = json.load(f)
    del ledger["sessions"][0]["finished"]
    (tmp_path / NAME).write_text(json.dumps(ledger))
    clock.now += 50.0
    summary = _session(tmp_path, clock, start=10, steps=0, seconds=0.0, finished=True)
    assert summary["seconds"]["down"] == pytest.approx(50.0)
