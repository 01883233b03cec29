"""A run that lost its checkpoints (metrics, TensorBoard, the ledger still there) is refused by `dit-jax
train`, naming what is there and what is missing, instead of silently starting over and replacing its
metrics; --config.start_over=True starts it over on purpose."""

import json
import os
import shutil

import pytest

from dit_jax.cli import main
from dit_jax.train.loop import train_and_evaluate
from helpers import TINY_FLAGS, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("run"))
    train_and_evaluate(tiny_config(total_steps=3), wd)
    return wd


def _rows(wd):
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


@pytest.mark.parametrize("lose", ["delete checkpoints/", "empty checkpoints/", "only uncommitted steps"])
def test_a_run_without_its_checkpoints_is_refused_and_starts_over_only_on_purpose(run, tmp_path, capsys, lose):
    wd = str(tmp_path / "run")
    shutil.copytree(run, wd)
    ckpts = os.path.join(wd, "checkpoints")
    shutil.rmtree(ckpts)
    if lose != "delete checkpoints/":
        os.makedirs(ckpts)
    if lose == "only uncommitted steps":
        os.makedirs(os.path.join(ckpts, "3", "state"))
    metrics = open(os.path.join(wd, "metrics.jsonl")).read()
    capsys.readouterr()
    for extra in ([], ["--dry_run"]):
        assert main(["train", f"--workdir={wd}", *TINY_FLAGS, "--config.total_steps=2", *extra]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith(("error", "Traceback"))]
        assert len(lines) == 1, err[-3000:]
        assert f"error: {wd} holds a training run (metrics.jsonl (" in lines[0], lines[0]
        assert "goodput.json" in lines[0] and "tensorboard/" in lines[0], lines[0]
        missing = "checkpoints/ is missing" if lose == "delete checkpoints/" else "holds no committed checkpoint"
        assert missing in lines[0] and "--config.start_over=True" in lines[0], lines[0]
        assert open(os.path.join(wd, "metrics.jsonl")).read() == metrics  # nothing replaced
    assert main(["train", f"--workdir={wd}", *TINY_FLAGS, "--config.total_steps=2", "--config.start_over=True"]) == 0
    out = capsys.readouterr().out
    assert "starting over (--config.start_over=True)" in out, out
    assert _rows(wd) == [1, 2]


def test_start_over_does_nothing_to_a_run_with_checkpoints(run, tmp_path, capsys):
    wd = str(tmp_path / "run")
    shutil.copytree(run, wd)
    assert main(["train", f"--workdir={wd}", *TINY_FLAGS, "--config.total_steps=4", "--config.start_over=True"]) == 0
    assert "resumed from step 3" in capsys.readouterr().out
    assert _rows(wd) == [1, 2, 3, 4]


def test_a_fresh_or_empty_workdir_still_starts(tmp_path, capsys):
    wd = str(tmp_path / "new")
    os.makedirs(os.path.join(wd, "checkpoints"))  # e.g. a run that stopped before its first save
    assert main(["train", f"--workdir={wd}", *TINY_FLAGS, "--config.total_steps=1"]) == 0
