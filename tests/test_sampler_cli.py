"""`dit-jax sample` with the fast solvers and SiT's samplers: the grid is what the sampler builder makes, the
.npz manifest records the sampler and its settings, and a sampler of the other objective is one line."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from dit_jax.cli import main
from dit_jax.jobs.sample import grid_labels
from dit_jax.sampling.grids import make_grid, to_uint8
from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler
from dit_jax.run import config_for_model, objective_of
from helpers import TINY, tiny_params
from dit_jax.weights import save_weights

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_weights(str(tmp_path_factory.mktemp("w") / "w"), tiny_params(), TINY)


@pytest.mark.parametrize("objective,sampler,extra", [("ddpm", "dpm++2m", ["--spacing", "trailing"]),
                                                      ("sit", "heun", ["--cfg-interval", "0,0.7"])])
def test_grid_is_the_builders_sample(weights, tmp_path, objective, sampler, extra):
    out = tmp_path / "g.png"
    assert main(["sample", "--weights", weights, "--objective", objective, "--sampler", sampler, "--steps", "5",
                 "--num", "4", "--seed", "3", "--nrow", "4", "--upscale", "1", "--out", str(out), *extra]) == 0
    config = config_for_model(TINY)
    config.objective = objective
    settings = SamplerSettings(sampler=sampler, steps="5", cfg_scale=4.0, spacing=dict(zip(extra[::2], extra[1::2])).get(
        "--spacing", ""), cfg_interval=(0.0, 0.7) if objective == "sit" else None)
    labels = np.asarray(grid_labels(None, 4, TINY.num_classes, 3), np.int32)
    want = make_grid(to_uint8(make_sampler(TINY, objective_of(config), settings)(
        tiny_params(), labels, jax.random.PRNGKey(3))), 4)
    got = np.asarray(Image.open(out))
    assert np.abs(got.astype(int) - want.reshape(got.shape).astype(int)).max() <= 1
    # Negative control: the other objective's model of the same weights draws another picture.
    other = tmp_path / "o.png"
    flip = {"ddpm": ("sit", "heun"), "sit": ("ddpm", "dpm++2m")}[objective]
    assert main(["sample", "--weights", weights, "--objective", flip[0], "--sampler", flip[1], "--steps", "5",
                 "--num", "4", "--seed", "3", "--nrow", "4", "--upscale", "1", "--out", str(other)]) == 0
    assert np.abs(np.asarray(Image.open(other)).astype(int) - got.astype(int)).max() > 8


def test_npz_manifest_records_the_sampler(weights, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--weights", weights, "--sampler", "unipc", "--steps", "4", "--num-samples", "3",
                 "--batch-per-device", "4", "--cfg-interval", "0.1,0.9", "--out", str(out)]) == 0
    settings = json.loads((tmp_path / "s.npz.shards" / "manifest.json").read_text())
    assert settings["sampler"] == "unipc" and settings["steps"] == "4" and settings["cfg_interval"] == [0.1, 0.9]


@pytest.mark.parametrize("argv,needle", [
    (["--sampler", "heun"], "it is a sampler of SiT models"),
    (["--objective", "sit", "--sampler", "dpm++2m"], "it is a sampler of DDPM models"),
    (["--sampler", "dpm++2m", "--steps", "ddim5"], "steps must be an integer"),
    (["--cfg-interval", "0.8,0.2"], "--cfg-interval"),
])
def test_a_bad_sampler_is_one_line(weights, tmp_path, capsys, argv, needle):
    assert main(["sample", "--weights", weights, "--num", "2", "--out", str(tmp_path / "x.png"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1
