"""Autoguidance (EDM2's generate_images.py): D = g + w (D_main - g) with a second model of the same
kind, in the one jitted sampler of every objective, with the guidance interval, through `dit-jax sample`."""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dit_jax.cli import main
from dit_jax.diffusion.ancestral import apply_guidance
from dit_jax.jobs.sample import grid_labels
from dit_jax.models.dit import DiT, init_params
from dit_jax.sampling.autoguidance import combine, guide_problems
from dit_jax.sampling.grids import make_grid, to_uint8
from dit_jax.sampling.run_sampler import SamplerSettings, guided_network, make_sampler
from dit_jax.run import config_for_model, objective_of
from dit_jax.weights import save_weights

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoguidance_helpers import GUIDE, guide_params, guided_npz  # noqa: E402
from helpers import TINY, run_script_on_8_devices, tiny_params  # noqa: E402

pytestmark = pytest.mark.slow  # compiles a sampler per sampler kind, one 8-device subprocess

def objective(kind):
    config = config_for_model(TINY)
    config.objective = kind
    return objective_of(config)


def test_combine_is_the_formula_and_cfg_is_its_special_case():
    rng = np.random.default_rng(0)
    main_out, guide_out = rng.normal(size=(2, 4, 4, 6)).astype(np.float32), rng.normal(size=(2, 4, 4, 6)).astype(
        np.float32)
    got = np.asarray(combine(main_out, guide_out, 2.5, 3))
    np.testing.assert_allclose(got[..., :3], guide_out[..., :3] + 2.5 * (main_out[..., :3] - guide_out[..., :3]),
                               rtol=1e-6, atol=1e-6)
    assert np.array_equal(got[..., 3:], main_out[..., 3:])  # the rest (a learned variance): the main model's
    # Classifier-free guidance = combine(conditional, unconditional), the reference's doubled layout's first half.
    cfg = np.asarray(apply_guidance(jnp.concatenate([main_out, guide_out]), 2.5, 3))[:2]
    assert np.array_equal(cfg, got)


@pytest.mark.parametrize("kind", ["ddpm", "sit"])
def test_guided_network_on_random_params(kind):
    obj = objective(kind)
    labels = jnp.asarray([1, 3], jnp.int32)
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
    t = jnp.asarray([900, 100]) if kind == "ddpm" else jnp.asarray([0.1, 0.9])
    w = 1.7
    params, gparams = tiny_params(), guide_params()

    # Both networks and both guided functions in one program (run op by op, the two models' hundreds
    # of eager operations each compiled on their own made this the file's slowest test).
    @jax.jit
    def outputs(params, gparams):
        fn = guided_network(TINY, obj, SamplerSettings(cfg_scale=w), params, labels, GUIDE, gparams)
        in_interval = guided_network(TINY, obj, SamplerSettings(cfg_scale=w, cfg_interval=(0.5, 1.0)), params,
                                     labels, GUIDE, gparams)
        return (DiT(TINY).apply({"params": params}, x, t, labels), DiT(GUIDE).apply({"params": gparams}, x, t, labels),
                fn(x, t), in_interval(x, t))
    m, g, got, got_interval = map(np.asarray, outputs(params, gparams))
    expected = g + w * (m[..., :3] - g)
    assert got.shape == ((2, 8, 8, 6) if kind == "ddpm" else (2, 8, 8, 3))
    err = np.max(np.abs(got[..., :3] - expected))
    assert err < 1e-6, err   # measured: 1.3e-7 (ddpm), 1.4e-7 (sit), outputs of size ~2
    if kind == "ddpm":
        assert np.array_equal(got[..., 3:], m[..., 3:])
    # Negative control: w applied the other way round (main + w (guide - main)) is far off.
    assert np.max(np.abs(got[..., :3] - (m[..., :3] + w * (g - m[..., :3])))) > 1e-2
    # The interval: noise levels in [0.5, 1] only; DDPM's t = 900 and SiT's t = 0.1 (s = 0.9) are inside.
    got = got_interval
    np.testing.assert_allclose(got[0, ..., :3], expected[0], atol=1e-5)
    np.testing.assert_allclose(got[1], m[1, ..., : got.shape[-1]], atol=1e-6)


def other_tiny_params():
    """Other weights of TINY's shape, to guide TINY with."""
    return jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(9), a.shape), tiny_params())


SAMPLERS = [("ddpm", "ddpm", "6"), ("ddpm", "ddim", "6"), ("ddpm", "dpm++2m", "4"), ("ddpm", "unipc", "4"),
            ("sit", "euler", "4"), ("sit", "heun", "4"), ("sit", "dopri5", "4"), ("sit", "sde-euler", "4"),
            ("sit", "sde-heun", "4")]


@pytest.mark.parametrize("kind,sampler,steps", SAMPLERS)
def test_every_sampler_guided_by_itself_is_the_main_model(kind, sampler, steps):
    obj = objective(kind)
    labels = jnp.asarray([0, 4], jnp.int32)
    key = jax.random.PRNGKey(1)
    params = tiny_params()
    settings = SamplerSettings(sampler=sampler, steps=steps, cfg_scale=3.7, cfg_interval=(0.0, 0.8))
    plain = make_sampler(TINY, obj, dataclasses.replace(settings, cfg_scale=1.0))(params, labels, key)
    guided_by_a_tiny = make_sampler(TINY, obj, settings, guide=TINY)
    selfguided = guided_by_a_tiny(params, labels, key, params)
    np.testing.assert_allclose(np.asarray(selfguided), np.asarray(plain), rtol=0, atol=1e-5)
    # Control: another guide moves the samples. The same program with other guide weights (a third
    # program, with the smaller GUIDE, cost a compile per sampler; the smaller guide in a sampler:
    # test_sample_command_guides and test_guided_npz_on_1_and_8_devices).
    other = guided_by_a_tiny(params, labels, key, other_tiny_params())
    assert np.max(np.abs(np.asarray(other) - np.asarray(plain))) > 1e-2


def test_what_may_guide():
    assert guide_problems(TINY, GUIDE, {}, None) == []  # smaller, without learned sigma: fine
    other = dataclasses.replace(GUIDE, num_classes=7, input_size=16)
    assert guide_problems(TINY, other, {}, None) == ["input_size: main 8, guide 16", "num_classes: main 5, guide 7"]
    assert guide_problems(TINY, GUIDE, {"objective": "ddpm"}, {"objective": "sit"}) == [
        "objective: main 'ddpm', guide 'sit'"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    return (save_weights(str(root / "main"), tiny_params(), TINY), save_weights(str(root / "guide"), guide_params(),
                                                                                 GUIDE),
            save_weights(str(root / "other"), init_params(dataclasses.replace(TINY, num_classes=7), jax.random.key(0)),
                         dataclasses.replace(TINY, num_classes=7)))


def test_sample_command_guides(weights, tmp_path, capsys):
    main_w, guide_w, other_w = weights
    out = tmp_path / "g.png"
    assert main(["sample", "--weights", main_w, "--guide", guide_w, "--cfg-scale", "2", "--steps", "5",
                 "--num", "4", "--seed", "3", "--nrow", "4", "--upscale", "1", "--out", str(out)]) == 0
    labels = np.asarray(grid_labels(None, 4, TINY.num_classes, 3), np.int32)
    settings = SamplerSettings(steps="5", cfg_scale=2.0)
    want = make_grid(to_uint8(make_sampler(TINY, objective("ddpm"), settings, guide=GUIDE)(
        tiny_params(), labels, jax.random.PRNGKey(3), guide_params())), 4)
    got = np.asarray(Image.open(out))
    assert np.abs(got.astype(int) - want.reshape(got.shape).astype(int)).max() <= 1
    npz = tmp_path / "s.npz"
    assert main(["sample", "--weights", main_w, "--guide", guide_w, "--cfg-scale", "2", "--steps", "4",
                 "--num-samples", "5", "--labels", "balanced", "--batch-per-device", "4", "--out", str(npz)]) == 0
    manifest = (tmp_path / "s.npz.shards" / "manifest.json").read_text()
    assert guide_w in manifest and "guide_checksums" in manifest
    capsys.readouterr()
    for argv, needle in [(["--guide", other_w], "is not a model of the main model's kind (num_classes: main 5, "
                                                 "guide 7)"),
                         (["--guide", guide_w + ":3"], ":STEP picks a checkpoint of a training run"),
                         (["--guide", str(tmp_path / "nothing")], "no such directory")]:
        assert main(["sample", "--weights", main_w, *argv, "--cfg-scale", "2", "--steps", "2",
                     "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --guide") and needle in err and err.count("\n") == 1, err


EIGHT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {tests!r})
import jax
from autoguidance_helpers import guided_npz
assert jax.device_count() == 8
guided_npz(sys.argv[1], 1)
"""


def test_guided_npz_on_1_and_8_devices(tmp_path):
    one = str(tmp_path / "one.npz")
    guided_npz(one, 4)
    eight = str(tmp_path / "eight.npz")
    run_script_on_8_devices(EIGHT.format(tests=os.path.dirname(os.path.abspath(__file__))), eight)
    with np.load(one) as a, np.load(eight) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
