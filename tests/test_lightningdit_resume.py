"""A resume that changes a LightningDiT model option is refused, as a changed depth is (the checkpoint's
model.* fields against the config's, through DiTConfig.architecture()); a checkpoint written before the
options existed reads as all off."""

import pytest

from dit_jax.models.dit import LIGHTNING_OPTIONS
from dit_jax.train.checkpoint import check_compatible, config_json
from dit_jax.configs.base import base_config


def _configs(**model):
    stored = base_config()
    current = base_config()
    current.model.update(model)
    return config_json(stored), config_json(current)


@pytest.mark.parametrize("option", LIGHTNING_OPTIONS)
def test_a_changed_model_option_is_refused(option):
    stored, current = _configs(**{option: True})
    with pytest.raises(ValueError, match=rf"model\.{option}: checkpoint False, config True"):
        check_compatible(stored, current, "/tmp/wd")


def test_unchanged_options_and_a_checkpoint_from_before_the_options_resume():
    stored, current = _configs(use_rope=True, use_swiglu=True)
    stored["model"].update(use_rope=True, use_swiglu=True)
    check_compatible(stored, current, "/tmp/wd")
    old, now = _configs()
    for option in LIGHTNING_OPTIONS:
        del old["model"][option]
    check_compatible(old, now, "/tmp/wd")
    with pytest.raises(ValueError, match=r"model\.wo_shift"):
        check_compatible(old, _configs(wo_shift=True)[1], "/tmp/wd")
