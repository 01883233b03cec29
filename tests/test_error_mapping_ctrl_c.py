"""Ctrl-C (SIGINT) during `dit-jax sample --num-samples`: exit 130 and one line that says a rerun
resumes, no traceback; and the rerun does resume (the line tells the truth)."""

import os
import signal
import sys

import pytest

from conftest import Child

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sample(out: str) -> Child:
    # The demo-sized model at random init, 4 shards of 8: a shard takes a few seconds on a CPU.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    return Child([sys.executable, "-m", "dit_jax.cli", "sample", "--num-samples", "32", "--batch-per-device", "8",
                  "--steps", "20", "--out", out], cwd=ROOT, env=env)


def test_ctrl_c_during_sample_num_samples_is_130_one_line_and_a_rerun_resumes(tmp_path):
    out = str(tmp_path / "samples.npz")
    child = _sample(out)
    child.wait_for("shard 1/4", timeout=240)
    child.send_signal(signal.SIGINT)
    output = child.finish(timeout=120)
    assert child.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted; the shards written so far are kept: rerun the same command to resume"], \
        output[-3000:]
    assert output.rstrip().endswith(errors[0])  # the last line: nothing printed after it
    rerun = _sample(out)
    text = rerun.finish(timeout=300)
    assert rerun.returncode == 0, text[-3000:]
    done = next(line for line in text.splitlines() if "shards already done" in line)
    assert not done.endswith("; 0 shards already done"), done  # the interrupted run's shards were kept
    assert os.path.isfile(out)
