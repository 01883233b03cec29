"""`dit-jax train` refuses a resume that would change what a checkpoint means (the objective, SiT's
path, ...): exit 2 with one `error:` line naming the field, and the checkpoints untouched."""

import os

import pytest

from dit_jax.cli import main
from dit_jax.train.loop import train_and_evaluate
from helpers import TINY_FLAGS, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny DDPM run and a tiny SiT run, 3 steps each (checkpoint at step 3)."""
    out = {}
    for name, changes in (("ddpm", {}), ("sit", {"objective": "sit"})):
        wd = str(tmp_path_factory.mktemp(name))
        train_and_evaluate(tiny_config(total_steps=3, **changes), wd)
        out[name] = wd
    return out


def _steps(wd):
    return sorted(os.listdir(os.path.join(wd, "checkpoints")))


@pytest.mark.parametrize("run,flags,expected", [
    ("ddpm", ["--config.objective=sit"], "objective: checkpoint 'ddpm', config 'sit'"),
    ("sit", [], "objective: checkpoint 'sit', config 'ddpm'"),
    ("sit", ["--config.objective=sit", "--config.transport.path=GVP"],
     "transport.path: checkpoint 'Linear', config 'GVP'"),
    ("ddpm", ["--config.diffusion.noise_schedule=squaredcos_cap_v2"],
     "diffusion.noise_schedule: checkpoint 'linear', config 'squaredcos_cap_v2'"),
    ("ddpm", ["--config.model.learn_sigma=False"], "model.learn_sigma: checkpoint True, config False"),
])
def test_a_resume_that_changes_the_meaning_of_the_checkpoint_exits_2(runs, run, flags, expected, capsys):
    wd = runs[run]
    before = _steps(wd)
    code = main(["train", f"--workdir={wd}", *TINY_FLAGS, "--config.total_steps=5", *flags])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(("error", "Traceback"))]
    assert len(lines) == 1 and expected in lines[0], lines
    assert "use a new --workdir" in lines[0]
    assert _steps(wd) == before and not os.path.isdir(os.path.join(wd, "checkpoints_set_aside"))


def test_the_same_meaning_resumes(runs, capsys):
    wd = runs["sit"]
    code = main(["train", f"--workdir={wd}", *TINY_FLAGS, "--config.total_steps=4", "--config.objective=sit",
                 "--config.optim.lr=3e-4"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert "resumed from step 3" in capsys.readouterr().out
