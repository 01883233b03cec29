"""Model weights on disk: params plus the model config, as an Orbax checkpoint directory.

This is what `dit-jax convert` writes and what sampling/fine-tuning loads. The config is stored
beside the params so a load can refuse weights of another model with a message naming both.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from dit_jax.convert.dit_torch import check_config_matches, stack_blocks, unstack_blocks
from dit_jax.models.dit import DiTConfig


def save_weights(directory: str, params, config: DiTConfig, force: bool = False) -> str:
    """Save unscanned or scanned params (stored unscanned) and the config; returns the path."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        if not force:
            raise FileExistsError(f"{directory} exists; choose a new path or pass force=True (--force) to replace it")
    if "blocks" in params:
        params = unstack_blocks(params, config.depth)
    params = jax.tree.map(np.asarray, params)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(directory, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 config=ocp.args.JsonSave(config.to_dict())), force=force)
    return directory


def load_config(directory: str) -> DiTConfig:
    directory = os.path.abspath(directory)
    if not os.path.isdir(os.path.join(directory, "config")):
        raise FileNotFoundError(f"{directory} is not a dit-jax weights directory (no 'config' item); "
                                "create one with `dit-jax convert`")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(directory, ocp.args.Composite(config=ocp.args.JsonRestore()))
    return DiTConfig.from_dict(dict(restored["config"]))


def load_weights(directory: str, config: DiTConfig | None = None) -> tuple[dict, DiTConfig]:
    """(params, config). With `config`, the stored architecture must match it (its compute
    settings, e.g. dtype or scan_blocks, are taken from `config`)."""
    stored = load_config(directory)
    cfg = check_config_matches(stored, config)
    directory = os.path.abspath(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(directory, ocp.args.Composite(params=ocp.args.StandardRestore()))
    params = restored["params"]
    return (stack_blocks(params, cfg.depth) if cfg.scan_blocks else params), cfg
