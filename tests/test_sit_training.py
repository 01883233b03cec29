"""SiT's objective wherever DiT training works: exact resume, one device against an 8-device FSDP mesh,
two processes with grids and evaluations against one, and its samplers through the one sampler builder."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.train.loop import train_and_evaluate
from helpers import final_params, losses, run_8_devices, tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

SIT = {"objective": "sit"}


@pytest.fixture(scope="module")
def sit_run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("sit"))
    train_and_evaluate(tiny_config(**SIT), wd)
    return wd


def test_sit_trains_with_its_own_loss(sit_run, tmp_path):
    """The loss is SiT's velocity regression, not DDPM's hybrid loss: no vb term, and another value."""
    rows = [json.loads(line) for line in open(os.path.join(sit_run, "metrics.jsonl"))]
    assert rows and all("vb" not in r and "mse" not in r for r in rows)
    ddpm = str(tmp_path / "ddpm")
    train_and_evaluate(tiny_config(total_steps=1), ddpm)
    assert abs(losses(ddpm)[1] - losses(sit_run)[1]) > 1e-3


def test_sit_resume_after_a_crash_reproduces_the_uninterrupted_run(sit_run, tmp_path):
    wd = str(tmp_path)
    train_and_evaluate(tiny_config(**SIT), wd, stop_after=4)
    train_and_evaluate(tiny_config(**SIT), wd)
    full, resumed = losses(sit_run), losses(wd)
    assert [resumed[s] for s in range(1, 7)] == [full[s] for s in range(1, 7)]
    (a, _, _), (b, _, _) = final_params(sit_run), final_params(wd)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_sit_on_one_device_and_an_8_device_fsdp_mesh(sit_run, tmp_path):
    wd = str(tmp_path / "mesh")
    res = run_8_devices(wd, **{"mesh.data": 2, "mesh.fsdp": 4, **SIT})
    assert "'data': 2, 'fsdp': 4" in res.stdout
    one, eight = losses(sit_run), losses(wd)
    np.testing.assert_allclose([eight[s] for s in range(1, 7)], [one[s] for s in range(1, 7)], rtol=2e-5)


def test_sit_on_two_processes_samples_and_evaluates_as_one(tmp_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from helpers import WITH_SAMPLING, finish, same_losses, scores, start
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    changes = {**WITH_SAMPLING, **SIT}
    outs = finish(start(two, changes) + start(one, changes, processes=1))
    assert "over 4 devices on 2 host(s)" in outs[0]
    assert same_losses(two, one)
    final_two, periodic_two = scores(two)
    final_one, periodic_one = scores(one)
    assert periodic_two == periodic_one and final_two == final_one and np.isfinite(periodic_two[3])
    with open(os.path.join(two, "samples", "step_0000006.png"), "rb") as a, \
            open(os.path.join(one, "samples", "step_0000006.png"), "rb") as b:
        assert a.read() == b.read()


# ----------------------------------------------------------------------------- the sampler builder


def tiny_model():
    from dit_jax.models.dit import DiTConfig, init_params
    cfg = DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=5)
    params = init_params(cfg, jax.random.key(0))
    return cfg, jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape), params)


def expected(cfg, params, labels, key, sample):
    """x_T and the guided model function built by hand, then `sample(model_fn, x_T)`."""
    from dit_jax.diffusion.ancestral import guided_model_fn
    from dit_jax.models.dit import DiT
    init_key, _ = jax.random.split(key)
    x_T = jax.random.normal(init_key, (len(labels), 8, 8, 3), jnp.float32)

    def class_model_fn(x, t, y):
        return DiT(cfg).apply({"params": params}, x, t, y)
    return sample(class_model_fn, guided_model_fn(class_model_fn, labels, cfg.null_class, 1.5, 3), x_T)


def test_builder_runs_the_fast_solvers_as_solve_does():
    from dit_jax.diffusion.gaussian import create_diffusion
    from dit_jax.diffusion.solvers import solve
    from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler
    cfg, params = tiny_model()
    labels, key, diffusion = jnp.arange(4) % 5, jax.random.PRNGKey(3), create_diffusion("")
    got = make_sampler(cfg, diffusion, SamplerSettings(sampler="dpm++2m", steps="6", cfg_scale=1.5))(params, labels, key)
    want = expected(cfg, params, labels, key, lambda _, fn, x: solve(diffusion.alphas_cumprod, fn, x,
                                                                      sampler="dpm++2m", steps=6))
    np.testing.assert_allclose(got, want[..., :3], rtol=0, atol=1e-5)
    # Negative control: another spacing (other timesteps) gives other samples.
    other = make_sampler(cfg, diffusion, SamplerSettings(sampler="dpm++2m", steps="6", cfg_scale=1.5,
                                                         spacing="trailing"))(params, labels, key)
    assert np.abs(np.asarray(other) - np.asarray(got)).max() > 1e-2


def test_builder_runs_sits_samplers_as_the_transport_does():
    from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler
    from dit_jax.transport import integrators as sit
    from dit_jax.transport.guidance import guided_model_fn
    from dit_jax.transport.transport import Transport
    cfg, params = tiny_model()
    labels, key, transport = jnp.arange(4) % 5, jax.random.PRNGKey(4), Transport()

    def run(method):
        return make_sampler(cfg, transport, SamplerSettings(sampler=method, steps="5", cfg_scale=1.5))(
            params, labels, key)

    def with_transport(class_model_fn, _, x_T, method):
        fn = guided_model_fn(class_model_fn, labels, cfg.null_class, 1.5, 3, out_channels=3)
        return sit.sample_ode(transport, fn, x_T, method=method, num_steps=5)
    for method in ("euler", "heun"):
        want = expected(cfg, params, labels, key, lambda c, f, x: with_transport(c, f, x, method))
        np.testing.assert_allclose(run(method), want, rtol=0, atol=1e-5)
    assert np.abs(np.asarray(run("euler")) - np.asarray(run("heun"))).max() > 1e-3  # negative control


@pytest.mark.parametrize("objective,sampler,message", [
    ("ddpm", "heun", "for objective 'ddpm'"),
    ("sit", "dpm++2m", "for objective 'sit'"),
    ("ddpm", "dpm++9m", "sampler must be one of"),
])
def test_a_sampler_of_another_objective_is_one_clear_problem(objective, sampler, message):
    from dit_jax.train.validation import config_problems
    problems = config_problems(tiny_config(**{"objective": objective, "sample.every": 2, "sample.sampler": sampler}))
    assert len(problems) == 1 and problems[0].startswith("sample.sampler must be one of") and message in problems[0]
