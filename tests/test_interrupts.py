"""Ctrl-C and SIGTERM through `dit-jax train`: Ctrl-C saves like SIGTERM, a second Ctrl-C exits at
once, and a signal during a long evaluation is noticed between its sampling batches."""

import os
import signal
import sys
import time

import pytest

from conftest import Child
from dit_jax.train.checkpoint import make_manager

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.hidden_size=32", "--config.model.depth=2", "--config.model.num_heads=2",
        "--config.batch_size=8", "--config.log_every=1", "--config.checkpoint_every=100000",
        "--config.total_steps=100000", "--config.sample.every=0"]


def start(workdir, *flags):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return Child([sys.executable, "-m", "dit_jax.cli", "train", f"--workdir={workdir}", *TINY, *flags], cwd=ROOT,
                 env=env)


def test_ctrl_c_saves_then_a_second_exits_at_once(tmp_path):
    wd = str(tmp_path / "once")
    proc = start(wd, "--config.evals.digits.kind=")
    proc.wait_for("step 3/", 300)
    proc.send_signal(signal.SIGINT)
    out = proc.finish(300)
    assert proc.returncode == 75, out[-3000:]  # preempted: a retry loop reruns it
    assert "preempted: checkpoint saved at step" in out, out[-3000:]
    assert (make_manager(wd, 3, 1).latest_step() or 0) >= 3

    proc = start(str(tmp_path / "twice"), "--config.evals.digits.kind=")
    proc.wait_for("step 3/", 300)
    proc.send_signal(signal.SIGINT)
    proc.wait_for("Ctrl-C again", 60)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    out = proc.finish(60)
    assert proc.returncode == 130 and time.time() - t0 < 10, out[-3000:]
    assert "exiting without saving" in out


def test_sigterm_during_a_long_evaluation_saves_within_seconds(tmp_path):
    wd = str(tmp_path / "run")
    # 400 samples in 40 batches of 20 steps: a minute or more on a CPU; the signal comes after the
    # progress line of its 10th batch, so the evaluation's own check between batches has to catch it.
    proc = start(wd, "--config.evals.digits.kind=digits", "--config.evals.digits.every=3",
                 "--config.evals.digits.num_samples=400", "--config.evals.digits.batch_size=10",
                 "--config.evals.digits.steps=20")
    proc.wait_for("  digits: 100/400 samples", 600)
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    out = proc.finish(300)
    assert time.time() - t0 < 60, out[-3000:]
    assert proc.returncode == 75, out[-3000:]
    assert "EMA quality" not in out and "  digits: 400/400" not in out  # the evaluation was cut short
    assert "preempted: checkpoint saved at step 3" in out, out[-3000:]
    assert make_manager(wd, 3, 1).latest_step() == 3


def test_a_finished_run_gives_the_signal_handlers_back(tmp_path):
    """In a notebook or any program that calls train_and_evaluate, Ctrl-C and SIGTERM behave after
    the run as before it."""
    from dit_jax.train.loop import train_and_evaluate
    from helpers import tiny_config
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    train_and_evaluate(tiny_config(total_steps=1), str(tmp_path / "run"))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
