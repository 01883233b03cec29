"""Model weights on disk: params plus the model config, as an Orbax checkpoint directory.

This is what `dit-jax convert` writes and what sampling/fine-tuning loads. The config is stored
beside the params so a load can refuse weights of another model with a message naming both.
"""

from __future__ import annotations

import uuid

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from dit_jax import storage
from dit_jax.checksum import fingerprint, mismatches
from dit_jax.exit_codes import BadInput
from dit_jax.models.dit import DiTConfig
from dit_jax.models.params import check_config_matches, stack_blocks, unstack_blocks


def save_weights(directory: str, params, config: DiTConfig, force: bool = False) -> str:
    """Save unscanned or scanned params (stored unscanned) and the config; returns the path."""
    if "blocks" in params:
        params = unstack_blocks(params, config.depth)
    return _save(directory, params, config.to_dict(), force)


# What Orbax puts at the top of a weights directory; a directory holding anything else is not one.
WEIGHTS_ENTRIES = {"params", "config", "integrity", "_CHECKPOINT_METADATA", "commit_success.txt"}


def replace_problem(directory) -> str | None:
    """Why `force` may not replace the existing `directory`, or None when it is a weights directory
    (and nothing else): --force must never delete a training run, its checkpoints, or a parent
    directory that happens to hold other files."""
    path = storage.resolve(directory)
    run = training_run_of(str(path))
    if run is not None:
        return f"{path} is (part of) the training run {run}; --force replaces only a weights directory"
    if not path.is_dir():
        return f"{path} is a file, not a weights directory; --force replaces only a weights directory"
    names = {p.name for p in path.iterdir()}
    if "config" not in names or names - WEIGHTS_ENTRIES:
        extra = sorted(names - WEIGHTS_ENTRIES)[:3]
        return (f"{path} is not a weights directory (it holds {extra or 'no config item'}); --force replaces only "
                "a weights directory written by `dit-jax convert` or `dit-jax export-weights`")
    return None


def _save(directory: str, params, config_dict: dict, force: bool) -> str:
    """Written to a temporary sibling and renamed into place: a failed save leaves what was there."""
    directory = storage.resolve(directory)
    if directory.exists():
        if not force:
            raise FileExistsError(f"{directory} exists; choose a new path or pass force=True (--force) to replace it")
        problem = replace_problem(directory)
        if problem:
            raise FileExistsError(f"{problem}: choose another output path")
    # Plain arrays: a freshly initialised model's params come boxed (nn.Partitioned), whose checksums
    # would be keyed by `.value` while the restored tree has none.
    params = jax.tree.map(np.asarray, nn.unbox(params))
    checksums, finite = fingerprint(params)
    if not finite:
        raise BadInput(f"the weights to write to {directory} hold NaN/Inf values: nothing written (they cannot "
                       "make an image; export another step, or weights from an intact run)")
    token = uuid.uuid4().hex[:8]
    tmp = directory.parent / f".{directory.name}.tmp-{token}"
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(tmp, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                               config=ocp.args.JsonSave(config_dict),
                                               integrity=ocp.args.JsonSave({"checksums": checksums})))
    except BaseException:
        for left in directory.parent.glob(f"{tmp.name}*"):  # with Orbax's own temporary directory
            storage.rmtree(left)
        raise
    if directory.exists():
        # Moved aside, not deleted, until the new weights are in place (locally a rename; object
        # stores have no rename of a prefix that is cheaper than copying, so there it is deleted).
        aside = directory.parent / f".{directory.name}.old-{token}"
        if storage.is_uri(directory):
            directory.rmtree()
        else:
            directory.rename(aside)
        tmp.rename(directory)
        storage.rmtree(aside)
    else:
        tmp.rename(directory)
    return str(directory)


def training_run_of(directory: str) -> str | None:
    """The training run (its --workdir) that `directory` is, or is the checkpoints (or one step) of; else None."""
    path = storage.resolve(directory)
    if (path / "checkpoints").is_dir():
        return str(path)
    if path.name == "checkpoints":
        return str(path.parent)
    if path.parent.name == "checkpoints" and (path / "state").is_dir():
        return str(path.parent.parent)
    return None


def weights_dir_problem(directory: str) -> str | None:
    """Why `directory` is not a dit-jax weights directory (a sentence that says what to pass instead), or None."""
    path = storage.resolve(directory)
    run = training_run_of(directory)
    if run is not None:
        return (f"{path} is a training run, not a weights directory: pass --workdir {run} to sample from "
                f"or resume it, or export its weights with `dit-jax export-weights --workdir {run} --out DIR`")
    if not path.is_dir():
        return f"no weights directory at {path}; create one with `dit-jax convert` or `dit-jax export-weights`"
    if not (path / "config").is_dir():
        return (f"{path} is not a dit-jax weights directory (no 'config' item); create one with "
                "`dit-jax convert` or `dit-jax export-weights`")
    return None


def _load_config_dict(directory: str) -> dict:
    directory = storage.resolve(directory)
    problem = weights_dir_problem(str(directory))
    if problem:
        raise FileNotFoundError(problem)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(directory, ocp.args.Composite(config=ocp.args.JsonRestore()))
    return dict(restored["config"])


def _load_params(directory: str):
    """The params of a weights directory, checked against the checksums stored with them (directories
    written before checksums were stored are read unchecked); BadInput naming the directory otherwise."""
    path = storage.resolve(directory)
    has_sums = (path / "integrity").exists()
    items = dict(params=ocp.args.StandardRestore(), **({"integrity": ocp.args.JsonRestore()} if has_sums else {}))
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(path, ocp.args.Composite(**items))
        bad = mismatches(dict(restored["integrity"])["checksums"], fingerprint(restored["params"])[0]) \
            if has_sums else []
    except Exception as e:  # noqa: BLE001 - whatever the library raises: the directory is damaged
        raise BadInput(f"the weights in {directory} do not read ({' '.join(str(e).split())[:300]}): export or "
                       "convert them again") from None
    if bad:
        raise BadInput(f"the weights in {directory} are damaged (checksum mismatch in {len(bad)} array(s), e.g. "
                       f"{bad[0]}): export or convert them again")
    return restored["params"]


def load_config(directory: str) -> DiTConfig:
    d = _load_config_dict(directory)
    if d.get("model_type") == VAE_TYPE:
        raise ValueError(f"{directory} holds VAE weights, not a DiT: pass it as --vae")
    return DiTConfig.from_dict(d)


def load_weights(directory: str, config: DiTConfig | None = None) -> tuple[dict, DiTConfig]:
    """(params, config). With `config`, the stored architecture must match it (its compute
    settings, e.g. dtype or scan_blocks, are taken from `config`)."""
    stored = load_config(directory)
    cfg = check_config_matches(stored, config)
    params = _load_params(directory)
    return (stack_blocks(params, cfg.depth) if cfg.scan_blocks else params), cfg


VAE_TYPE = "sd-vae"


def save_vae_weights(directory: str, params, config, force: bool = False) -> str:
    """Stable Diffusion VAE params (dit_jax.models.vae) and their VAEConfig."""
    return _save(directory, params, {"model_type": VAE_TYPE, **config.to_dict()}, force)


def load_vae_weights(directory: str):
    """(params, VAEConfig) written by save_vae_weights / `dit-jax convert --from-diffusers-vae`."""
    from dit_jax.models.vae import VAEConfig
    d = _load_config_dict(directory)
    if d.pop("model_type", None) != VAE_TYPE:
        raise ValueError(f"{directory} holds DiT weights, not the VAE: convert the VAE with "
                         "`dit-jax convert --from-diffusers-vae PATH --out DIR`")
    return _load_params(directory), VAEConfig.from_dict(d)


def load_run_vae(config, model_cfg):
    """(params, VAEConfig) of data.vae, checked against the model's latent shape; None without one."""
    if not config.data.vae:
        return None
    params, vae_config = load_vae_weights(config.data.vae)
    factor = vae_config.downsample_factor
    if vae_config.scaling_factor != config.data.latent_scale:
        raise ValueError(f"data.latent_scale {config.data.latent_scale} differs from the VAE's scaling factor "
                         f"{vae_config.scaling_factor} ({config.data.vae})")
    if (model_cfg.in_channels != vae_config.latent_channels
            or model_cfg.input_size * factor != config.data.image_size):
        raise ValueError(f"the VAE in {config.data.vae} maps {config.data.image_size} px images to "
                         f"{config.data.image_size // factor}x{config.data.image_size // factor}x"
                         f"{vae_config.latent_channels} latents, but the model takes {model_cfg.input_size}x"
                         f"{model_cfg.input_size}x{model_cfg.in_channels}")
    return params, vae_config
