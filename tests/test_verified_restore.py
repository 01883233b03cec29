"""Every command that reads a run (`sample --workdir`, `export-weights`) goes through one verified restore:
it uses the newest intact checkpoint and says which (and why a newer one was skipped), or gives one
`error:` line naming the run and the problem. Never weights off by 1e33, a black image or a traceback."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.train.loop import train_and_evaluate
from dit_jax.weights import load_weights
from helpers import flip_block as _flip_block, losing_config as _config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run with checkpoints at steps 2 and 4, and the EMA weights of each exported."""
    wd = str(tmp_path_factory.mktemp("run"))
    train_and_evaluate(_config(total_steps=4), wd)
    return wd


def _copy(run, tmp_path):
    wd = str(tmp_path / "run")
    shutil.copytree(run, wd)
    return wd


def _export(wd, out, *more):
    return main(["export-weights", "--workdir", wd, "--out", out, *more])


def _leaves(weights_dir):
    return jax.tree.leaves(load_weights(weights_dir)[0])


def _one_error(err):
    lines = [line for line in err.splitlines() if line.startswith(("error", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


# The block _flip_ema found in a copy of the module's run: every copy holds the same bytes, so a later
# copy tries it first (the search restores the step once per 4 KiB block tried: up to 20 s).
_SILENT_BLOCKS = []


def _flip_ema(step_dir):
    """4 KiB inverted where the EMA weights are stored and still read back without complaint (as
    `_flip_4k`, but the change must land in what the readers read)."""
    import glob

    import orbax.checkpoint as ocp

    def ema(path):
        return jax.tree.leaves(ocp.PyTreeCheckpointer().restore(os.path.join(path, "state"))["ema_params"])
    original = ema(step_dir)
    files = sorted(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True), key=os.path.getsize)
    blocks = [(os.path.relpath(path, step_dir), offset) for path in reversed(files)
              for offset in range(0, os.path.getsize(path) - 4096, 4096)]
    for name, offset in [b for b in _SILENT_BLOCKS if b in blocks] + blocks:
        path = os.path.join(step_dir, name)
        _flip_block(path, offset)  # inverting the block again puts it back
        try:
            damaged = ema(step_dir)
        except Exception:  # noqa: BLE001 - a loud failure: try the next block
            damaged = None
        if damaged is not None and not all(np.array_equal(a, b) for a, b in zip(original, damaged)):
            _SILENT_BLOCKS.append((name, offset))
            return
        _flip_block(path, offset)
    raise AssertionError(f"no 4 KiB block of {step_dir} changes the EMA weights silently")


def _truncate_all(step_dir):
    """Every array file cut to half its length (a copy that stopped half-way); `_truncate` cuts only the
    largest, which may hold none of the EMA weights that the readers read."""
    import glob
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _edit_config(step_dir):
    """A stored config damaged into another valid one (one more block)."""
    path = os.path.join(step_dir, "config", "metadata")
    with open(path) as f:
        config = json.load(f)
    config["model"]["depth"] += 1
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("damage", [_flip_ema, _truncate_all, _edit_config, os.makedirs],
                         ids=["flipped bytes", "truncated arrays", "edited config", "empty newer step"])
def test_readers_skip_a_damaged_newest_step_and_say_which_step_they_used(run, tmp_path, capsys, damage):
    intact2 = str(tmp_path / "step2")
    assert _export(run, intact2, "--step", "2") == 0
    wd = _copy(run, tmp_path)
    newest = os.path.join(wd, "checkpoints", "6" if damage is os.makedirs else "4")
    damage(newest)
    capsys.readouterr()
    out = str(tmp_path / "w")
    assert _export(wd, out) == 0, capsys.readouterr().err[-3000:]
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    used = 4 if damage is os.makedirs else 2
    assert f"at step {used} to" in captured.out, captured.out
    if damage is not os.makedirs:
        assert f"warning: checkpoint step 4 of {wd} is damaged" in captured.err, captured.err
        assert f"using step 2, the newest intact checkpoint" in captured.err
        assert _same(out, intact2)  # the weights of step 2, not damaged ones
    grid = str(tmp_path / "grid.png")
    assert main(["sample", "--workdir", wd, "--out", grid, "--num", "2", "--steps", "2"]) == 0
    captured = capsys.readouterr()
    assert f"at step {used}" in captured.out and "Traceback" not in captured.err, captured


def test_a_damaged_step_asked_for_and_a_run_without_an_intact_step_give_one_error_line(run, tmp_path, capsys):
    wd = _copy(run, tmp_path)
    _flip_ema(os.path.join(wd, "checkpoints", "4"))
    assert _export(wd, str(tmp_path / "a"), "--step", "4") == 2
    line = _one_error(capsys.readouterr().err)
    assert f"checkpoint step 4 of {wd} is damaged (checksum mismatch" in line and "leave out --step" in line, line
    _truncate_all(os.path.join(wd, "checkpoints", "2"))
    for argv in (["export-weights", "--workdir", wd, "--out", str(tmp_path / "b")],
                 ["sample", "--workdir", wd, "--out", str(tmp_path / "g.png"), "--num", "2", "--steps", "2"],
                 ["sample", "--workdir", wd, "--out", str(tmp_path / "s.npz"), "--num-samples", "2", "--steps", "2"]):
        assert main(argv) == 2
        line = _one_error(capsys.readouterr().err)
        assert f"no intact checkpoint in {wd}: step 4: " in line and "step 2: it does not read" in line, line
    assert not os.path.exists(str(tmp_path / "b")) and not os.path.exists(str(tmp_path / "g.png"))
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]  # a reader moves nothing


def test_a_run_without_checkpoints_is_one_error_line(run, tmp_path, capsys):
    wd = _copy(run, tmp_path)
    for step in ("2", "4"):
        shutil.rmtree(os.path.join(wd, "checkpoints", step))
    os.makedirs(os.path.join(wd, "checkpoints", "4"))  # an empty step directory
    assert main(["sample", "--workdir", wd, "--out", str(tmp_path / "g.png"), "--num", "2"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "Unknown key" not in line and f"no intact checkpoint in {wd}: step 4: no commit marker" in line, line


def test_a_failed_read_leaves_no_traceback_at_exit(run, tmp_path):
    """tensorstore's tasks of a failed read report "Event loop is closed" as the process ends: not shown."""
    import subprocess
    import sys
    from helpers import ROOT, cli_env as _env
    wd = _copy(run, tmp_path)
    _truncate_all(os.path.join(wd, "checkpoints", "4"))
    res = subprocess.run([sys.executable, "-m", "dit_jax.cli", "export-weights", "--workdir", wd, "--out",
                          str(tmp_path / "w")], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "at step 2" in res.stdout, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Event loop" not in res.stderr, res.stderr[-3000:]
