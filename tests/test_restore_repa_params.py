"""A REPA run's checkpoint holds its projectors beside the DiT's arrays: the readers' shape check
(train/verified_restore.py) accepts them when the stored config has REPA on, and only then."""

import dataclasses

import flax.linen as nn
import jax

from dit_jax.configs.base import to_dit_config
from dit_jax.configs.files import load_config
from dit_jax.models.dit import DiT, example_inputs
from dit_jax.models.repa import PROJECTORS
from dit_jax.train.verified_restore import _shape_problem


def _params_and_config():
    config = load_config("configs/repa.py:digits").to_dict()
    model = dataclasses.replace(to_dit_config(config["model"]), attention="xla", remat="none")
    dit = jax.eval_shape(lambda: DiT(model).init(jax.random.key(0), *example_inputs(model)))["params"]
    dit = dict(nn.unbox(dit))   # the arrays as a checkpoint holds them
    projector = {"projector_0_fc1": {"kernel": jax.ShapeDtypeStruct((128, 256), "float32")}}
    return dit, {**dit, PROJECTORS: projector}, config


def test_a_repa_checkpoints_projectors_pass_the_shape_check_and_nothing_else_does():
    dit, with_projectors, config = _params_and_config()
    assert _shape_problem(config, with_projectors) is None
    # The same arrays under a config without REPA: the projectors are arrays the model does not have.
    plain = {**config, "repa": {**config["repa"], "encoder": ""}}
    assert "repa_projectors" in _shape_problem(plain, with_projectors)
    # REPA on does not hide a missing DiT array.
    missing = {k: v for k, v in with_projectors.items() if k != "final_linear"}
    assert "final_linear" in _shape_problem(config, missing)
    assert _shape_problem(plain, dit) is None
