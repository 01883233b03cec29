"""REPA's DINOv2 encoder as shapes: `dit-jax compile` (and the benchmark's random encoders) need no
checkpoint file, while a run that loads the encoder still names the missing one."""

import jax
import pytest

from dit_jax.configs.repa import get_config
from dit_jax.exit_codes import BadInput
from dit_jax.parallel.mesh import make_mesh
from dit_jax.run import make_run
from dit_jax.train.repa import attach


@pytest.fixture(scope="module")
def run_without_weights():
    """configs/repa.py:XL/2 as `dit-jax compile` gets it: no --config.repa.weights."""
    config = get_config("XL/2")
    assert config.repa.encoder == "dinov2-vit-b" and not config.repa.weights
    return make_run(config, vae=None, mesh=make_mesh(devices=jax.devices()[:1]))


def test_abstract_encoders_need_no_weights_file(run_without_weights):
    run = attach(run_without_weights, "abstract")
    assert run.repa.encoders == ("dinov2-vit-b",) and run.repa.z_dims == (768,)
    leaves = jax.tree.leaves(run.encoder_params[0])
    assert leaves and all(isinstance(a, jax.ShapeDtypeStruct) for a in leaves)
    # DINOv2-B: 86.6 M parameters with its 37 x 37 + 1 position table, 85.7 M with it resampled to REPA's
    # 16 x 16 + 1 tokens at 256 px (1,113 fewer rows of 768).
    assert sum(a.size for a in leaves) == 85_725_696


def test_loading_encoders_still_asks_for_the_checkpoint(run_without_weights):
    with pytest.raises(BadInput, match=r"repa\.weights: dinov2-vit-b needs the official DINOv2 checkpoint"):
        attach(run_without_weights, "load")
