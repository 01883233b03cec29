"""configs/sit.py: SiT's train.py recipe for every named model, at 256 and 512 px, loads and validates."""

import pytest

from dit_jax.models.dit import MODEL_NAMES
from dit_jax.configs.files import load_config
from dit_jax.run import objective_of
from dit_jax.train.validation import config_problems
from dit_jax.transport import Transport

ARGS = [n.removeprefix("DiT-") + res for n in MODEL_NAMES for res in ("", "-512")]


def _problems(config) -> list[str]:
    """config_problems without the ones about files a real run would name (the VAE weights)."""
    return [p for p in config_problems(config) if "data.vae" not in p and "needs the VAE" not in p]


@pytest.mark.parametrize("arg", ARGS)
def test_every_model_loads_and_validates(arg):
    c = load_config(f"configs/sit.py:{arg}")
    assert _problems(c) == []
    name = arg.split("-")[0]
    assert c.model.name == f"SiT-{name}" and c.model.learn_sigma
    assert c.model.input_size == (64 if arg.endswith("-512") else 32) and c.data.image_size == 8 * c.model.input_size
    assert c.objective == "sit" and objective_of(c) == Transport("Linear", "velocity", None)
    assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps, c.batch_size, c.ema_decay) == (
        1e-4, 0.0, 0, 256, 0.9999)
    assert (c.evals.fid.sampler, c.evals.fid.steps, c.evals.fid.cfg_scale) == ("heun", "125", 1.5)
    assert (c.sample.sampler, c.sample.steps) == ("heun", "125")
    assert c.total_steps == (7_000_000 if arg == "XL/2" else 3_000_000 if arg.endswith("-512") else 400_000)


def test_a_bad_sit_field_is_reported():
    """Negative control: the validation really looks at the SiT fields."""
    c = load_config("configs/sit.py:S/2")
    c.transport.path = "Cosine"
    assert any(p.startswith("transport:") for p in _problems(c))
    c = load_config("configs/sit.py:S/2")
    c.evals.fid.update(kind="fid", sampler="ddim")
    assert any("sampler must be one of" in p for p in _problems(c))
