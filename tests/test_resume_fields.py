"""Every config field is classified for a resume (changes meaning / changes data stream / free), and a
change of meaning is refused naming the field, both values and the flag that sets it back."""

import glob
import os

import pytest

from dit_jax.configs.files import load_config
from dit_jax.exit_codes import BadInput
from dit_jax.train import resume_fields
from dit_jax.train.checkpoint import DATA_STREAM_FIELDS, check_compatible, config_json
from dit_jax.configs.base import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/ is dit_jax/configs (a link): its config files are the modules that define get_config.
CONFIG_FILES = sorted({os.path.realpath(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) + glob.glob(
    os.path.join(ROOT, "dit_jax", "configs", "*.py")) if "def get_config(" in open(p).read()})


def _unclassified(config) -> list[str]:
    return sorted(k for k in resume_fields.leaves(config) if resume_fields.classify(k) is None)


def test_every_field_of_the_base_config_is_classified():
    assert _unclassified(base_config()) == []


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if not p.endswith("__init__.py")],
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_every_field_of_each_config_file_is_classified(path):
    assert _unclassified(load_config(path)) == []


def test_a_new_field_is_unclassified_until_the_table_names_it():
    c = base_config()
    c.brand_new_knob = 3
    c.transport.brand_new = "x"
    assert _unclassified(c) == ["brand_new_knob", "transport.brand_new"]
    # and at run time a change of it is refused, as the safe side
    old, new = config_json(c), config_json(c)
    new["brand_new_knob"] = 4
    assert resume_fields.changes(old, new)[0].kind == resume_fields.MEANING


def test_the_classes_of_the_fields_the_issue_names():
    meaning = ["objective", "transport.path", "transport.prediction", "transport.loss_weight", "transport.train_eps",
               "diffusion.noise_schedule", "diffusion.num_timesteps", "model.learn_sigma", "model.depth",
               "model.hidden_size", "data.image_size", "model.scan_blocks"]
    assert {k: resume_fields.classify(k) for k in meaning} == dict.fromkeys(meaning, resume_fields.MEANING)
    assert set(DATA_STREAM_FIELDS) == {"batch_size", "data.name", "data.split", "data.random_flip", "data.latents"}
    free = ["optim.lr", "total_steps", "mesh.fsdp", "evals.fid.kind", "evals.anything.added", "sample.steps",
            "transport.sample_eps", "model.remat", "data.data_dir"]
    assert {k: resume_fields.classify(k) for k in free} == dict.fromkeys(free, resume_fields.FREE)


@pytest.mark.parametrize("field,value", [("objective", "sit"), ("transport.path", "GVP"),
                                         ("diffusion.noise_schedule", "cosine"), ("model.learn_sigma", False),
                                         ("transport.loss_weight", "velocity")])
def test_a_change_of_meaning_is_refused_in_one_line_naming_the_field_both_values_and_the_fix(field, value):
    stored = config_json(base_config())
    current = config_json(base_config())
    node = current
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    old = node[leaf]
    node[leaf] = value
    with pytest.raises(BadInput) as e:
        check_compatible(stored, current, "runs/x")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{field}: checkpoint {old!r}, config {value!r}" in msg, msg
    assert f"--config.{field}={old}" in msg and "use a new --workdir" in msg, msg


def test_free_fields_may_change():
    stored, current = config_json(base_config()), config_json(base_config())
    current["optim"]["lr"] = 3e-4
    current["transport"]["sample_eps"] = 0.01
    current["total_steps"] = 10
    check_compatible(stored, current, "runs/x")


def test_a_field_the_checkpoint_does_not_record_held_its_default():
    stored, current = config_json(base_config()), config_json(base_config())
    del stored["objective"]  # a checkpoint from before the field existed: it trained with the default
    check_compatible(stored, current, "runs/x")
    current["objective"] = "sit"
    with pytest.raises(ValueError, match=r"objective: checkpoint 'ddpm', config 'sit'"):
        check_compatible(stored, current, "runs/x")
