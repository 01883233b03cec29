"""LightningDiT's objective options on SiT's transport (config.transport.use_lognorm, use_cosine_loss,
timestep_shift) against float64 numpy statements of its formulas; the comparison with the PyTorch statement
of its transport/ on injected draws is in test_lightningdit_parity.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.sampling.run_sampler import SamplerSettings
from dit_jax.configs.base import base_config
from dit_jax.run import objective_of
from dit_jax.train.step import draw_time, objective_terms
from dit_jax.transport.integrators import sample_ode, shift_grid, time_grid
from dit_jax.transport.transport import Transport, cosine_similarity, logit_normal_time, sample_time


def test_uniform_time_is_unchanged_and_lognorm_time_is_logit_normal():
    key = jax.random.key(3)
    np.testing.assert_array_equal(sample_time(Transport(), key, 8), jax.random.uniform(key, (8,), jnp.float32))
    np.testing.assert_array_equal(draw_time(Transport(), key, 8), sample_time(Transport(), key, 8))
    t = np.asarray(draw_time(Transport(use_lognorm=True), key, 20000), np.float64)
    logit = np.log(t / (1 - t))
    assert 0 < t.min() and t.max() < 1
    assert abs(logit.mean()) < 0.03 and abs(logit.std() - 1) < 0.03, (logit.mean(), logit.std())


def test_logit_normal_time_is_the_float64_sigmoid_to_float32_rounding():
    n = np.linspace(-9, 9, 4001).astype(np.float32)
    want = (1 / (1 + np.exp(-n.astype(np.float64)))).astype(np.float32)
    got = np.asarray(logit_normal_time(n))
    rel = np.abs(got.astype(np.float64) - want) / want
    assert rel.max() < 3e-7, rel.max()


def test_cosine_term_is_one_minus_cos_along_channels_averaged_over_pixels():
    rng = np.random.default_rng(0)
    x1, x0 = rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    out = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    u = x1.astype(np.float64) - x0
    cos = np.sum(out * u, -1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(u, axis=-1))
    want = np.mean(1 - cos, axis=(1, 2))
    t = rng.uniform(0, 1, 3).astype(np.float32)
    terms = objective_terms(Transport(use_cosine_loss=True), lambda xt, tt: jnp.asarray(out), x1, t, x0)
    np.testing.assert_allclose(terms["cos_loss"], want, rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], terms["mse"] + terms["cos_loss"], rtol=1e-7)
    np.testing.assert_allclose(terms["mse"], np.mean((out - u) ** 2, axis=(1, 2, 3)), rtol=1e-6)
    wrong = np.mean(1 - np.sum(out * u, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(u, axis=1)), axis=(1, 2))
    assert np.abs(wrong - want).max() > 1e-2   # negative control: cos along the wrong axis
    assert float(cosine_similarity(jnp.zeros((1, 4)), jnp.ones((1, 4)))[0]) == 0.0   # clamped norms, no NaN


def test_timestep_shift_grid():
    grid = time_grid(0.0, 1.0, 11)
    for s in (0.3, 1.0, 3.0):
        want = s * grid.astype(np.float64) / (1 + (s - 1) * grid.astype(np.float64))
        np.testing.assert_allclose(shift_grid(grid, s), want, rtol=3e-7, atol=1e-8)
    np.testing.assert_array_equal(shift_grid(grid, 0.0), grid)
    assert shift_grid(grid, 0.3)[1] < grid[1]   # t = 1 is data: s < 1 spends more steps near the noise
    with pytest.raises(ValueError, match="timestep_shift"):
        shift_grid(grid, -1.0)
    x = jnp.ones((1, 2, 2, 1))
    shifted = sample_ode(Transport(), lambda x, t: x * 0 + t[:, None, None, None], x, method="euler", num_steps=5,
                         timestep_shift=0.3)
    g = shift_grid(time_grid(0, 1, 5), 0.3).astype(np.float64)
    np.testing.assert_allclose(shifted, 1 + np.sum(g[:-1] * np.diff(g)), rtol=1e-6)   # v = t: x1 = 1 + sum t dt


def test_config_fields_reach_the_objective_and_the_sampler():
    c = base_config()
    c.objective = "sit"
    c.transport.update(use_lognorm=True, use_cosine_loss=True, timestep_shift=0.3)
    objective = objective_of(c)
    assert objective.use_lognorm and objective.use_cosine_loss
    settings = SamplerSettings.from_config(c.sample, c.transport)
    assert settings.timestep_shift == 0.3
    assert settings.problems(objective) == [] and SamplerSettings(sampler="euler", steps="10",
                                                                  timestep_shift=0.3).problems(objective) == []
    assert any("timestep_shift" in p for p in SamplerSettings(sampler="sde-euler", steps="10",
                                                              timestep_shift=0.3).problems(objective))
    c.transport.prediction = "noise"
    with pytest.raises(ValueError, match="use_cosine_loss"):
        objective_of(c)
