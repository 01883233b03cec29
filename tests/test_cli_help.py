"""`dit-jax train --help` lists every config field with its value and the comment written above it (or
beside it) in dit_jax/configs/base.py."""

from dit_jax.cli import main
from dit_jax.cli.config_args import field_descriptions

SOURCE = '''
def base_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The objective: ddpm or sit.
    c.objective = "ddpm"
    c.batch_size = 256            # global, over all devices and hosts
    # Data: where the images come from.
    c.data = ml_collections.ConfigDict(dict(
        name="imagenet2012", split="train",
        prefetch=2,  # batches sent ahead
        # "" trains on pixels; "encode": in the step.
        latents="", vae=""))  # vae: weights dir
    return c
'''


def test_comments_above_beside_and_inside_sections_describe_their_fields():
    notes = field_descriptions(SOURCE)
    assert notes == {"objective": "The objective: ddpm or sit.", "batch_size": "global, over all devices and hosts",
                     "data": "Data: where the images come from.", "data.prefetch": "batches sent ahead",
                     "data.latents": '"" trains on pixels; "encode": in the step.', "data.vae": "weights dir"}
    assert "seed" not in notes and "data.name" not in notes  # no comment, no description


def test_train_help_shows_each_fields_description(capsys):
    assert main(["train", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("  data.vae = ''")
    assert lines[at + 1].strip() == "weights dir from `dit-jax convert --from-diffusers-vae`"
    at = lines.index("  objective = 'ddpm'")
    assert lines[at + 1].strip().startswith('The objective: "ddpm"')
    assert any(line.startswith("  --workdir: run directory") for line in lines)
