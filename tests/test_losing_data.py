"""Faults that used to lose a run: non-finite losses, damaged or uncommitted checkpoints, two
writers on one workdir, a full disk during an asynchronous save, repeated metrics rows."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dit_jax.train.integrity import NonFiniteLoss
from dit_jax.train.loop import train_and_evaluate
from dit_jax.workdir_lock import WorkdirLocked
from conftest import Child
from helpers import ROOT, TINY_FLAGS, cli_env as _env, flip_block as _flip_block, losing_config as _config, tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

def _cli(script_lines, args, timeout=300):
    """`dit-jax train ARGS` in a fresh process after SCRIPT_LINES (e.g. resource limits)."""
    script = "\n".join(["import sys", *script_lines, "from dit_jax.cli import main",
                        "sys.exit(main(['train'] + sys.argv[1:]))"])
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=timeout)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
                for line in f]


def _steps(workdir):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def _ema(workdir, step):
    from dit_jax.train.checkpoint import load_ema
    return jax.tree.leaves(load_ema(workdir, step)[0])


@pytest.fixture(scope="module")
def ten_steps(tmp_path_factory):
    """A finished tiny run with checkpoints at steps 2, 4, 6, 8, 10."""
    wd = str(tmp_path_factory.mktemp("ten"))
    train_and_evaluate(_config(), wd)
    assert _steps(wd) == [2, 4, 6, 8, 10]
    return wd


def _copy(src, tmp_path):
    wd = str(tmp_path / "run")
    shutil.copytree(src, wd)
    return wd


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    import multiprocessing
    wd = str(tmp_path)
    with pytest.raises(NonFiniteLoss) as e:  # with a data worker process, which must not outlive the run
        train_and_evaluate(_config(**{"optim.lr": 1e6, "total_steps": 12, "data.worker_count": 1}), wd)
    assert multiprocessing.active_children() == []
    bad = int(str(e.value).split("NaN/Inf at step ")[1].split(":")[0])
    # Stopped at the first non-finite step; every checkpoint kept is from before it and finite.
    assert _steps(wd) and max(_steps(wd)) < bad, (_steps(wd), bad)
    assert f"the last good checkpoint (step {max(_steps(wd))}) is kept" in str(e.value)
    assert all(np.isfinite(x).all() for x in _ema(wd, max(_steps(wd))))
    # Clean shutdown: no save left half-done.
    assert not glob.glob(os.path.join(wd, "checkpoints", "*tmp*")), os.listdir(os.path.join(wd, "checkpoints"))
    # metrics.jsonl is strict JSON: the non-finite values of the last logged step are null.
    rows = _rows(wd)
    assert rows[-1]["step"] == bad and (rows[-1]["loss"] is None or rows[-1]["grad_norm"] is None), rows[-1]


def _data_file(step_dir):
    return max(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True), key=os.path.getsize)


def _flip_4k(step_dir):
    """4 KiB inverted inside the largest data file, at a place that still reads back without complaint
    (array values; where the block hits a compressed chunk's header or the file's index, the read
    fails loudly instead), found by trying offsets on a scratch copy with Orbax itself."""
    import orbax.checkpoint as ocp

    path = _data_file(step_dir)
    size = os.path.getsize(path)
    original = jax.tree.leaves(ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "state")))
    scratch = step_dir + ".scratch"
    for offset in range(4096, size - 4096, 4096):
        shutil.copytree(step_dir, scratch)
        _flip_block(os.path.join(scratch, os.path.relpath(path, step_dir)), offset)
        try:
            damaged = jax.tree.leaves(ocp.PyTreeCheckpointer().restore(os.path.join(scratch, "state")))
        except Exception:  # noqa: BLE001 - a loud failure: try the next block
            damaged = None
        shutil.rmtree(scratch)
        if damaged is not None and not all(np.array_equal(a, b) for a, b in zip(original, damaged)):
            _flip_block(path, offset)
            assert os.path.getsize(path) == size
            return
    raise AssertionError(f"no 4 KiB block of {path} reads back as silently changed data")


def _truncate(step_dir):
    path = _data_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _drop_metadata(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _garbage_config(step_dir):
    with open(os.path.join(step_dir, "config", "metadata"), "w") as f:
        f.write("{not json")


def test_damaged_checkpoints_fall_back_to_the_previous_one_and_metrics_keep_one_row_per_step(
        ten_steps, tmp_path, capsys):
    wd = _copy(ten_steps, tmp_path)
    damages = {10: _flip_4k, 8: _truncate, 6: _drop_metadata, 4: _garbage_config}
    for step, damage in damages.items():
        damage(os.path.join(wd, "checkpoints", str(step)))
    train_and_evaluate(_config(), wd)
    out = capsys.readouterr().out
    for step in damages:
        assert f"warning: checkpoint step {step} is damaged" in out, (step, out)
        assert os.path.isdir(os.path.join(wd, "checkpoints_set_aside", str(step)))  # kept, out of the way
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4 and "checksum mismatch" in warnings[0], warnings  # the flipped block reads as data
    assert "resuming from step 2, the newest intact checkpoint" in out, out
    assert _steps(wd) == [2, 4, 6, 8, 10]
    # Steps 3..10 were re-run from the good checkpoint: the new step 10 equals the original one,
    assert all(np.array_equal(a, b) for a, b in zip(_ema(wd, 10), _ema(ten_steps, 10)))
    # and metrics.jsonl dropped the old rows past step 2 instead of repeating them.
    assert [row["step"] for row in _rows(wd)] == list(range(1, 11))


def test_uncommitted_step_directories_are_skipped_and_saves_go_on(ten_steps, tmp_path, capsys):
    wd = _copy(ten_steps, tmp_path)
    ckpts = os.path.join(wd, "checkpoints")
    shutil.copytree(os.path.join(ckpts, "10"), os.path.join(ckpts, "12"))  # a copy without commit markers
    for marker in ("commit_success.txt", "_CHECKPOINT_METADATA"):
        os.remove(os.path.join(ckpts, "12", marker))
    os.makedirs(os.path.join(ckpts, "14"))  # an empty (half-created) step
    train_and_evaluate(_config(total_steps=12), wd)
    out = capsys.readouterr().out
    assert f"warning: {os.path.join(ckpts, '12')} has no commit marker" in out, out
    assert f"warning: {os.path.join(ckpts, '14')} has no commit marker" in out, out
    assert "resumed from step 10" in out, out
    # Step 12 was trained and really saved (not the copy of step 10 that stood in its place).
    assert _steps(wd) == [2, 4, 6, 8, 10, 12]
    assert not all(np.array_equal(a, b) for a, b in zip(_ema(wd, 12), _ema(wd, 10)))
    assert [row["step"] for row in _rows(wd)] == list(range(1, 13))


def test_resuming_with_another_seed_is_refused(ten_steps, tmp_path):
    wd = _copy(ten_steps, tmp_path)
    with pytest.raises(ValueError, match=r"started with seed 0.*--config.seed=0, or use a new --workdir"):
        train_and_evaluate(_config(seed=7, total_steps=12), wd)
    assert _steps(wd) == [2, 4, 6, 8, 10]


HOLD_LOCK = """
import sys, time
from dit_jax.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(300)
"""


def test_a_second_training_on_a_workdir_is_refused_and_a_dead_holders_lock_taken_over(ten_steps, tmp_path):
    wd = _copy(ten_steps, tmp_path)
    holder = Child([sys.executable, "-c", HOLD_LOCK, wd], env=_env())
    try:
        holder.wait_for("held", 120)
        with pytest.raises(WorkdirLocked, match=f"is in use by another training \\(pid {holder.pid} "):
            train_and_evaluate(_config(total_steps=11), wd)
        assert _steps(wd) == [2, 4, 6, 8, 10]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the lock file stays behind
        holder.finish(30)
    assert os.path.exists(os.path.join(wd, "train.lock"))
    train_and_evaluate(_config(total_steps=11), wd)  # the dead holder's lock is stale: taken over
    assert _steps(wd)[-1] == 11
    assert not os.path.exists(os.path.join(wd, "train.lock"))  # released on exit


def test_kill_9_during_an_asynchronous_save_keeps_every_committed_checkpoint(tmp_path):
    """A real SIGKILL of `dit-jax train` while an asynchronous save is under way (its temporary
    directory exists): every checkpoint committed before it is kept and restores, and the rerun
    resumes from the newest one, setting the half-written one aside, with the losses of the run that
    was killed."""
    wd = str(tmp_path / "run")
    ckpts = os.path.join(wd, "checkpoints")
    flags = [f"--workdir={wd}", *TINY_FLAGS, "--config.total_steps=100000", "--config.checkpoint_every=1",
             "--config.keep_checkpoints=1000"]
    proc = Child([sys.executable, "-m", "dit_jax.cli", "train", *flags], env=_env(), cwd=ROOT)
    try:
        proc.wait_for("step 3/", 300)
        deadline, committed = time.monotonic() + 300, []
        while time.monotonic() < deadline:  # watch for a save in progress after a committed one
            names = os.listdir(ckpts)
            if committed and any("tmp" in n for n in names):
                proc.send_signal(signal.SIGKILL)
                break
            committed = sorted(int(n) for n in names if n.isdigit())
            time.sleep(0.002)
        else:
            pytest.fail("no asynchronous save seen in progress:\n" + proc.output[-3000:])
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    half = [n for n in os.listdir(ckpts) if "tmp" in n]
    assert half, os.listdir(ckpts)  # the kill did land during a save
    assert set(committed) <= set(_steps(wd)), (committed, _steps(wd))
    for step in committed:  # each restores
        assert all(np.isfinite(x).all() for x in _ema(wd, step))
    killed = {r["step"]: r["loss"] for r in _rows(wd)}
    latest = _steps(wd)[-1]
    assert latest + 1 in killed  # the step after the newest checkpoint had run: it is run again
    result = train_and_evaluate(_config(total_steps=latest + 2, checkpoint_every=1000), wd)
    assert result["step"] == latest + 2
    rerun = {r["step"]: r["loss"] for r in _rows(wd)}
    assert rerun[latest + 1] == killed[latest + 1]  # same batch, same noise, same state
    assert not glob.glob(os.path.join(ckpts, "*tmp*"))  # the half-written save was set aside


FULL_DISK = ["import resource, signal",
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)",
             # Every file write past 100 kB fails, as on a full disk: the state's data files do.
             "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))"]


def test_a_failed_asynchronous_save_stops_the_run_in_one_line(ten_steps, tmp_path):
    wd = _copy(ten_steps, tmp_path)
    for step in (4, 6, 8, 10):
        shutil.rmtree(os.path.join(wd, "checkpoints", str(step)))
    res = _cli(FULL_DISK, [f"--workdir={wd}", "--config.total_steps=30", *TINY_FLAGS])
    assert res.returncode == 2, res.stderr[-3000:]
    ours = [line for line in res.stderr.splitlines() if line.startswith(("error", "ERROR", "Traceback"))]
    assert len(ours) == 1 and ours[0].startswith("error: writing the checkpoint of step 3 "), ours[:5]
    assert "File too large" in ours[0] and "resume from step 2" in ours[0], ours[0]
    assert "Event loop" not in res.stderr and "exception was never retrieved" not in res.stderr
    assert _steps(wd) == [2]
    assert not glob.glob(os.path.join(wd, "checkpoints", "*tmp*"))  # the failed save is cleaned up
    train_and_evaluate(_config(total_steps=3), wd)  # with space again it resumes
    assert _steps(wd) == [2, 3]


def test_a_save_error_line_keeps_the_os_reason_past_tensorstores_spec():
    """tensorstore puts the store's JSON spec after the OS error; the one-line message must still say
    why the write failed (the spec once pushed "File too large" out of the shortened line)."""
    from dit_jax.train.checkpoint import _one_line
    tmp = "/tmp/run/checkpoints/3.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0"
    spec = '{"base":{"driver":"ocdbt","base":"file:///tmp/run/checkpoints/"},' + '"x":"' + "y" * 600 + '"}'
    error = OSError(f'OUT_OF_RANGE: Error opening "zarr" driver: Error writing "rng/.zarray" in OCDBT database at '
                    f'local file "{tmp}/": Failed writing: "{tmp}/d/963087": Failed to write 11479 bytes to file 9: '
                    f"File too large [tensorstore_spec='{spec}'] [os_error_code='27']")
    line = _one_line(error)
    assert "File too large" in line and "rng/.zarray" in line and "yyyy" not in line, line
