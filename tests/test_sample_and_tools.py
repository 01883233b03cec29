"""The sample command, the jitted sampler, and tools/compare_torch.py end to end."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dit_jax.cli import main
from dit_jax.diffusion.gaussian import create_diffusion
from dit_jax.models.dit import DiTConfig, init_params
from dit_jax.sampling.grids import make_grid, to_uint8
from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler
from dit_jax.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=5)


def test_uint8_conversion_is_the_reference_truncation():
    x = np.array([-1.0, -0.999, 0.0, 0.5, 0.9999, 1.0, 2.0])
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 191, 255, 255, 255])
    # Truncation, not rounding: 127.5 * 0.0227 + 128 = 130.89 -> 130.
    assert to_uint8(np.array([0.0227]))[0] == 130


def test_grid_layout():
    imgs = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(5)])
    grid = make_grid(imgs, nrow=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 1 and grid[4, 1, 0] == 3 and grid[4, 9, 0] == 0


def test_sampler_is_deterministic_and_guidance_changes_it():
    params = init_params(TINY, jax.random.key(0))
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape), params)
    labels = jnp.array([0, 1, 2, 3])
    d = create_diffusion("")
    plain = make_sampler(TINY, d, SamplerSettings(steps="5", cfg_scale=1.0))
    a, b = plain(params, labels, jax.random.key(7)), plain(params, labels, jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 8, 8, 3)
    assert not np.allclose(a, plain(params, labels, jax.random.key(8)))
    guided = make_sampler(TINY, d, SamplerSettings(steps="5", cfg_scale=4.0))(params, labels, jax.random.key(7))
    assert not np.allclose(a, guided)
    ddim = make_sampler(TINY, d, SamplerSettings(steps="5", sampler="ddim"))(params, labels, jax.random.key(7))
    assert np.isfinite(ddim).all() and not np.allclose(a, ddim)


def test_cli_sample_default_and_from_weights(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "--num", "4", "--steps", "4", "--out", str(out), "--upscale", "1"]) == 0
    assert "RANDOMLY INITIALISED" in capsys.readouterr().out
    with Image.open(out) as grid:
        assert grid.size == (2 * 34 + 2, 2 * 34 + 2)
    w = save_weights(str(tmp_path / "w"), init_params(TINY, jax.random.key(0)), TINY)
    assert main(["sample", "--weights", w, "--num", "3", "--classes", "1,4", "--steps", "3",
                 "--out", str(tmp_path / "g2.png")]) == 0
    assert "[1, 4, 1]" in capsys.readouterr().out
    assert main(["sample", "--weights", w, "--classes", "9", "--out", str(tmp_path / "g3.png")]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_evaluate_requires_its_inputs(capsys):
    assert main(["evaluate"]) == 2  # one line (argparse's usage text and SystemExit before)
    err = capsys.readouterr().err
    assert "reference" in err and len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_compare_torch_tool_on_the_reference_statement(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "compare_torch.py"), "--reference",
           os.path.join(ROOT, "tests", "torch_reference"), "--model", "DiT-S/8", "--input-size", "16",
           "--num-classes", "10", "--steps", "2", "--batch", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "guided forward (cfg 1.5)" in res.stdout and "all rows within tolerance" in res.stdout
    bad = subprocess.run(cmd[:2] + ["--reference", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "no models.py" in bad.stderr
