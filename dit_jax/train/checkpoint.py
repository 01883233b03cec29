"""Orbax checkpoints of a training run: train state and the config (the data position is the step).

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when
complete), so a half-written checkpoint is never listed as the latest step. A restore goes
straight into the shardings of the current mesh, which may differ from the one that saved it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

CONFIG_ITEM, STATE_ITEM = "config", "state"


def make_manager(workdir: str, keep: int, interval: int, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=interval,
                                           enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, config_json: dict, force: bool = False) -> bool:
    items = {STATE_ITEM: ocp.args.StandardSave(state), CONFIG_ITEM: ocp.args.JsonSave(config_json)}
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def stored_config(manager: ocp.CheckpointManager, step: int) -> dict:
    restored = manager.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
    return dict(restored[CONFIG_ITEM])


def restore(manager: ocp.CheckpointManager, step: int, abstract_state) -> Any:
    """The state at `step` placed into the shardings of `abstract_state`."""
    items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
    return manager.restore(step, args=ocp.args.Composite(**items))[STATE_ITEM]


def check_compatible(stored: dict, current: dict, workdir: str) -> None:
    """Refuse to resume a run of another model (or with another data setup), naming each difference."""
    from dit_jax.train.config_base import to_dit_config
    stored_model = to_dit_config(stored["model"]).architecture()
    current_model = to_dit_config(current["model"]).architecture()
    diffs = [f"model.{k}: checkpoint {stored_model[k]!r}, config {current_model[k]!r}"
             for k in stored_model if stored_model[k] != current_model[k]]
    for key in ("image_size", "channels", "num_classes"):
        a, b = stored.get("data", {}).get(key), current.get("data", {}).get(key)
        if a != b:
            diffs.append(f"data.{key}: checkpoint {a!r}, config {b!r}")
    if diffs:
        raise ValueError(f"the checkpoint in {workdir} belongs to another model/config: " + "; ".join(diffs)
                         + ". Use a new --workdir, or set the config back to match.")


def config_json(config) -> dict:
    """A JSON-able copy of an ml_collections config (round trip through its own JSON)."""
    return json.loads(config.to_json())


def load_ema(workdir: str, step: int | None = None):
    """(EMA params, model config, step) of a run's latest (or given) checkpoint, for sampling.

    Restores onto this process's first device, whatever mesh saved it.
    """
    import jax

    from dit_jax.train.config_base import to_dit_config
    manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler(), CONFIG_ITEM: ocp.JsonCheckpointHandler()})
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first (dit-jax train --workdir ...)")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    # Only the EMA params, read straight onto one device (partial restore skips the optimizer).
    target = {"ema_params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                         manager.item_metadata(step)[STATE_ITEM]["ema_params"])}
    state = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                   partial_restore=True)
    restored = manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: state,
                                                                 CONFIG_ITEM: ocp.args.JsonRestore()}))
    model = to_dit_config(restored[CONFIG_ITEM]["model"])
    return restored[STATE_ITEM]["ema_params"], model, step
