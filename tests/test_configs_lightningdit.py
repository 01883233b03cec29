"""configs/lightningdit.py: LightningDiT's release recipe on SD-VAE latents loads, validates and builds."""

import jax
import pytest

from dit_jax.configs.files import load_config
from dit_jax.models.dit import abstract_params
from dit_jax.configs.base import to_dit_config
from dit_jax.run import objective_of
from dit_jax.train.validation import config_problems
from dit_jax.transport import Transport


def _problems(config) -> list[str]:
    return [p for p in config_problems(config) if "data.vae" not in p and "needs the VAE" not in p]


@pytest.mark.parametrize("arg,depth,hidden,patch", [("B/2", 12, 768, 2), ("XL/2", 28, 1152, 2), ("XL/1", 28, 1152, 1)])
def test_lightningdit_config_loads_and_validates(arg, depth, hidden, patch):
    c = load_config(f"configs/lightningdit.py:{arg}")
    assert _problems(c) == []
    model = to_dit_config(c.model)
    assert (model.depth, model.hidden_size, model.patch_size, model.input_size, model.in_channels) == (
        depth, hidden, patch, 32, 4)
    assert (model.use_swiglu, model.use_rope, model.use_rmsnorm, model.use_qknorm, model.wo_shift,
            model.learn_sigma) == (True, True, True, False, False, False)
    assert objective_of(c) == Transport("Linear", "velocity", None, use_lognorm=True, use_cosine_loss=True)
    assert (c.optim.lr, c.optim.b2, c.optim.weight_decay, c.batch_size, c.total_steps, c.ema_decay) == (
        2e-4, 0.95, 0.0, 1024, 80_000, 0.9999)
    assert (c.evals.fid.sampler, c.evals.fid.steps, c.evals.fid.cfg_scale, tuple(c.evals.fid.cfg_interval),
            c.transport.timestep_shift) == ("euler", "250", 10.0, (0.0, 0.9), 0.3)
    if arg == "B/2":   # SwiGLU of width int(2/3 * 3072) = 2048 per block
        shapes = abstract_params(model)
        assert shapes["blocks_0"]["mlp"]["w12"]["kernel"].shape == (768, 2, 2048)
        assert sum(a.size for a in jax.tree.leaves(shapes)) > 100e6


def test_an_unknown_size_is_refused():
    with pytest.raises(ValueError, match="takes one of"):
        load_config("configs/lightningdit.py:S/2")
