"""Rerunning `dit-jax train` on a finished run: nothing is trained, the final scores already written are
printed, not evaluated again (72 s for the demo), and the time between the sessions is not lost to
restarts in the goodput ledger."""

import json
import os

import pytest

import dit_jax.train.evaluators as evaluation
from dit_jax.train.goodput import NAME as LEDGER
from dit_jax.train.loop import train_and_evaluate
from helpers import tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

EVAL = {"evals.digits.kind": "digits", "evals.digits.every": 0, "evals.digits.num_samples": 10,
        "evals.digits.batch_size": 10, "evals.digits.steps": "3", "total_steps": 2, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("finished"))
    return wd, train_and_evaluate(tiny_config(**EVAL), wd)


def _counting(monkeypatch):
    calls = []
    own = evaluation.evaluate

    def evaluate(*args, **kwargs):
        calls.append(args[1].name)
        return own(*args, **kwargs)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    return calls


def test_a_finished_run_rerun_prints_its_scores_without_evaluating_again(finished, monkeypatch, capsys):
    wd, first = finished
    with open(os.path.join(wd, "eval_scores.json")) as f:
        written = json.load(f)
    assert written["step"] == 2 and set(written["evaluators"]) == {"digits"}
    calls = _counting(monkeypatch)
    capsys.readouterr()
    again = train_and_evaluate(tiny_config(**EVAL), wd)
    out = capsys.readouterr().out
    assert calls == []
    assert "nothing left to train" in out and "are in" in out and "not evaluated again" in out, out
    assert "class accuracy" in out  # the scores, as the first session printed them
    assert {k: again[k] for k in written} == written
    assert again["eval/digits/frechet_distance"] == first["eval/digits/frechet_distance"]
    with open(os.path.join(wd, LEDGER)) as f:
        summary = json.load(f)["summary"]
    assert summary["sessions"] == 2 and summary["seconds"]["down"] == 0 and summary["idle_s"] > 0


@pytest.mark.parametrize("change", [{"evals.digits.num_samples": 20}, {"evals.digits.steps": "4"}])
def test_control_other_evaluators_evaluate_again(finished, tmp_path, monkeypatch, change):
    import shutil
    wd = str(tmp_path / "copy")
    shutil.copytree(finished[0], wd)
    calls = _counting(monkeypatch)
    train_and_evaluate(tiny_config(**{**EVAL, **change}), wd)
    assert calls == ["digits"]
    described = []
    for run in (finished[0], wd):
        with open(os.path.join(run, "eval_scores.json")) as f:
            described.append(json.load(f)["evaluators"]["digits"])
    assert described[0] != described[1]
