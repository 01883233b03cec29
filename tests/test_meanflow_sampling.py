"""MeanFlow sampling: 1-NFE and k-step against the statement (tests/meanflow_reference), the sampler's bad
input, and `dit-jax sample --sampler meanflow` on a MeanFlow training run whose sample grids and digits
evaluator ran with the meanflow sampler."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.convert.meanflow_flax import convert
from dit_jax.diffusion.gaussian import create_diffusion
from dit_jax.exit_codes import BadInput
from dit_jax.meanflow.objective import MeanFlow
from dit_jax.models.dit import dit_config
from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "meanflow_reference"))
import statement  # noqa: E402

pytestmark = pytest.mark.slow

SHAPE = dict(depth=2, hidden=32, heads=2, patch=2, channels=4, classes=10)
TOL = 1e-5   # relative to the largest sample magnitude; measured ~3e-7


@pytest.fixture(scope="module")
def model():
    tree = statement.official_tree(1, **SHAPE, time_scale=4.0)
    params, config = convert(tree, input_size=8, num_heads=SHAPE["heads"])
    return tree, params, config


def _statement_samples(tree, x_T, y, steps, time_input="t"):
    """The official generate(): z <- z - (t - r) u(z, t, t - r, y) over linspace(1, 0, steps + 1), float64."""
    grid = np.linspace(1.0, 0.0, steps + 1)
    with jax.enable_x64(True):
        z, tree64 = jnp.asarray(np.asarray(x_T, np.float64)), statement.to64(tree)
        b = z.shape[0]
        for t, r in zip(grid[:-1], grid[1:]):
            tt, rr = jnp.full((b,), t), jnp.full((b,), r)
            u = statement.network(tree64, z, tt if time_input == "t" else rr, tt - rr, jnp.asarray(y), SHAPE["heads"])
            z = z - (t - r) * u
        return np.asarray(z)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_matches_the_statement(model, steps):
    tree, params, config = model
    y = np.arange(6) % SHAPE["classes"]
    key = jax.random.PRNGKey(3)
    run = make_sampler(config, MeanFlow(), SamplerSettings(sampler="meanflow", steps=str(steps), cfg_scale=4.0))
    ours = np.asarray(run(params, jnp.asarray(y, jnp.int32), key))
    x_T = jax.random.normal(jax.random.split(key)[0], ours.shape, jnp.float32)   # make_sampler's x_T
    ref = _statement_samples(tree, x_T, y, steps)
    err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    print(steps, f"{err:.1e}")
    assert err < TOL
    # Negative control: the network read at r instead of t.
    wrong = _statement_samples(tree, x_T, y, steps, time_input="r")
    wrong_err = np.max(np.abs(ours - wrong)) / np.max(np.abs(wrong))
    print("read at r", f"{wrong_err:.1e}")
    assert wrong_err > 100 * TOL


def test_sampler_bad_input(model):
    _, _, mf_config = model
    ddpm = create_diffusion("", learn_sigma=False)
    plain = dit_config("S/2", input_size=8, depth=1, hidden_size=32, num_heads=2, num_classes=10, learn_sigma=False)
    with pytest.raises(BadInput, match="second time input"):
        make_sampler(mf_config, ddpm, SamplerSettings(sampler="ddpm", steps="10"))
    with pytest.raises(BadInput, match="second time input"):
        make_sampler(plain, MeanFlow(), SamplerSettings(sampler="meanflow", steps="1"))
    problems = SamplerSettings(sampler="meanflow", steps="1").problems(ddpm)
    assert problems and "it is a sampler of MeanFlow models (objective 'meanflow')" in problems[0]
    problems = SamplerSettings(sampler="heun", steps="4").problems(MeanFlow())
    assert problems and "for objective 'meanflow'" in problems[0]
    assert SamplerSettings(sampler="meanflow", steps="0").problems(MeanFlow())
    assert not SamplerSettings(sampler="", steps="1").problems(MeanFlow())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 4-step MeanFlow demo run on the digits: sample grids at steps 2 and 4, the digits evaluator at the end."""
    workdir = str(tmp_path_factory.mktemp("mf") / "run")
    assert main(["train", "--workdir", workdir, *RUN_ARGS]) == 0
    return workdir


RUN_ARGS = ["--config", "configs/meanflow.py:demo", "--config.total_steps=4", "--config.model.hidden_size=32",
            "--config.model.depth=1", "--config.model.num_heads=2", "--config.evals.digits.num_samples=20",
            "--config.evals.digits.every=0", "--config.sample.every=2", "--config.sample.num=4",
            "--config.checkpoint_every=2", "--config.log_every=1", "--config.batch_size=16"]


def test_training_run_sampled_its_grids_and_evaluated_with_meanflow(run_dir):
    assert sorted(os.listdir(os.path.join(run_dir, "samples"))) == ["step_0000002.png", "step_0000004.png"]


@pytest.mark.parametrize("steps", ["1", "2"])
def test_cli_samples_a_meanflow_run(run_dir, tmp_path, steps, capsys):
    out = str(tmp_path / "grid.png")
    assert main(["sample", "--workdir", run_dir, "--sampler", "meanflow", "--steps", steps, "--num", "4",
                 "--out", out]) == 0
    assert os.path.isfile(out)
    assert f"{steps} meanflow steps (NFE {steps}" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--sampler", "meanflow", "--steps", "0"], "steps must be an integer >= 1 for the meanflow sampler"),
    (["--sampler", "heun", "--steps", "4"], "for objective 'meanflow'"),
    (["--objective", "ddpm"], "trained with objective 'meanflow'"),
])
def test_cli_bad_input_on_a_meanflow_run(run_dir, tmp_path, capsys, args, message):
    assert main(["sample", "--workdir", run_dir, *args, "--num", "4", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_cli_meanflow_sampler_on_a_ddpm_model_is_bad_input(tmp_path, capsys):
    assert main(["sample", "--sampler", "meanflow", "--steps", "1", "--num", "4",
                 "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "it is a sampler of MeanFlow models (objective 'meanflow')" in err and err.count("\n") == 1


@pytest.mark.parametrize("change,message", [
    ("--config.meanflow.omega=2.0", "meanflow.omega: checkpoint 1.0, config 2.0"),
    ("--config.objective=sit", "objective: checkpoint 'meanflow', config 'sit'"),
])
def test_resume_refuses_a_changed_objective(run_dir, capsys, change, message):
    assert main(["train", "--workdir", run_dir, *RUN_ARGS, "--config.total_steps=6", "--config.sample.every=0",
                 "--config.evals.digits.kind=", change]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
