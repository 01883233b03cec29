"""Orbax checkpoints of a training run: train state and the config (the data position is the step).

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when
complete). A restore goes straight into the shardings of the current mesh, which may differ from
the one that saved it.

Each checkpoint carries a checksum of its state (dit_jax.train.integrity), and only a finite
state is saved. On resume, step directories without Orbax's commit markers (copied or
half-written) and checkpoints that fail to read or to match their checksum are moved to
WORKDIR/checkpoints_set_aside/ with a warning, and the newest intact checkpoint is used.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import orbax.checkpoint as ocp

from dit_jax import storage
from dit_jax.exit_codes import BadInput
from dit_jax.train import integrity, orbax_noise, resume_fields
from dit_jax.train.checkpoint_layout import (COMMIT_MARKERS, CONFIG_ITEM, INTEGRITY_ITEM, STATE_ITEM,  # noqa: F401
                                             checksum_problem, committed_steps as available_steps, config_digest,
                                             one_line as _one_line)
SET_ASIDE = "checkpoints_set_aside"


class CheckpointError(ValueError):
    """A checkpoint could not be written, or none of those present could be read."""


def make_manager(workdir: str, keep: int, interval: int, async_save: bool = True) -> ocp.CheckpointManager:
    orbax_noise.quiet_while_saving()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=interval, cleanup_tmp_directories=True,
                                           enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(storage.join(workdir, "checkpoints"), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, config_json: dict, force: bool = False) -> None:
    """Start an asynchronous save of a finite state with its checksum; errors of an earlier save
    surface here at the latest (see `check_writes`)."""
    finish_writes(manager)  # Orbax waits for the previous save anyway; this names its failure
    checksums, finite = integrity.fingerprint(state)
    if not finite:
        raise integrity.NonFiniteLoss(integrity.non_finite_message(
            f"the train state at step {step} holds NaN/Inf values", str(storage.resolve(manager.directory).parent),
            manager.latest_step()))
    items = {STATE_ITEM: ocp.args.StandardSave(state), CONFIG_ITEM: ocp.args.JsonSave(config_json),
             INTEGRITY_ITEM: ocp.args.JsonSave({"checksums": checksums,
                                                 "config_sha256": config_digest(config_json)})}
    if not manager.save(step, args=ocp.args.Composite(**items), force=force):
        raise CheckpointError(f"the checkpoint of step {step} was not written to {manager.directory} (Orbax "
                              f"declined it; its latest step is {manager.latest_step()}): use a new --workdir")


def check_writes(manager: ocp.CheckpointManager, wait: bool = False) -> None:
    """Raise CheckpointError, in one line, if an asynchronous save has failed (e.g. a full disk).

    Without `wait` it is cheap (it looks at a finished background write, it does not wait for
    one), so the loop calls it at every step and a failure stops the run at once rather than at
    the next save.
    """
    step = manager.latest_step()  # the one being written, if any
    try:
        if wait or not manager.is_saving_in_progress():
            manager.wait_until_finished()  # returns at once when no save is running
    except Exception as e:  # noqa: BLE001 - whatever the write raised, the run cannot go on
        kept = manager.latest_step()  # Orbax has dropped the failed step by now
        raise CheckpointError(
            f"writing the checkpoint of step {step} to {manager.directory} failed: {_one_line(e)}. Free space "
            f"(or fix access) there and rerun with the same workdir to resume from "
            + (f"step {kept}, the last complete checkpoint" if kept is not None else "the start")) from e


def finish_writes(manager: ocp.CheckpointManager) -> None:
    check_writes(manager, wait=True)


def close(manager: ocp.CheckpointManager, failed: bool) -> None:
    """Shut the manager down; after a failure also drop the temporary directory of a save that did
    not complete, and never let a second error hide the first."""
    try:
        manager.close()
    except Exception:  # noqa: BLE001
        if not failed:
            raise
    finally:
        orbax_noise.quiet_after_failure() if failed else orbax_noise.restore()
    if failed and jax.process_index() == 0:
        for tmp in storage.resolve(manager.directory).glob("*.orbax-checkpoint-tmp*"):
            tmp.rmtree() if tmp.is_dir() else tmp.unlink()


def stored_config(manager: ocp.CheckpointManager, step: int) -> dict:
    restored = manager.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
    return dict(restored[CONFIG_ITEM])


def restore(manager: ocp.CheckpointManager, step: int, abstract_state) -> Any:
    """The state at `step` placed into the shardings of `abstract_state`."""
    items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
    return manager.restore(step, args=ocp.args.Composite(**items))[STATE_ITEM]


def resume(manager: ocp.CheckpointManager, abstract_state, config_json: dict, workdir: str,
           say=print):
    """(state, step) of the newest intact committed checkpoint, or (None, None) in an empty workdir.

    Uncommitted step directories and damaged checkpoints (unreadable config, metadata or data, or
    a checksum that does not match) are set aside with a warning naming the step. A checkpoint of
    another model or seed is refused (check_compatible), never set aside.
    """
    directory = storage.resolve(manager.directory)
    for path in uncommitted_step_dirs(directory):
        say(f"warning: {path} has no commit marker (copied or half-written): "
            f"{_set_aside(directory, path, workdir)}; it is not resumed from")
    manager.reload()
    total = config_json.get("total_steps")
    latest = max(manager.all_steps(), default=None)
    if latest is not None and total is not None and latest > total:
        raise ValueError(f"the run in {workdir} is already at step {latest}, past --config.total_steps={total}: "
                         f"nothing to train. Raise total_steps above {latest} to train on, or use the run as it is "
                         f"(`dit-jax sample --workdir {workdir}`, `dit-jax export-weights --workdir {workdir}`)")
    damaged = []
    for step in reversed(manager.all_steps()):
        problem, state = _try_restore(manager, step, abstract_state, config_json, workdir)
        if problem is None:
            if damaged:
                say(f"resuming from step {step}, the newest intact checkpoint")
            if step == total:
                say(f"step {step} is total_steps: nothing left to train (raise --config.total_steps to train on)")
            return state, step
        damaged.append(step)
        say(f"warning: checkpoint step {step} is damaged ({problem}): "
            f"{_set_aside(directory, directory / str(step), workdir)}; falling back to the previous checkpoint")
        manager.reload()
    if damaged:
        raise CheckpointError(f"every checkpoint in {directory} is damaged (steps {sorted(damaged)}), see the "
                              f"warnings above; they were moved to {storage.join(workdir, SET_ASIDE)}. Rerun with "
                              f"--config.start_over=True to start this workdir afresh, or use a new --workdir")
    return None, None


def uncommitted_step_dirs(directory) -> list:
    if not directory.exists():
        return []
    return sorted((p for p in directory.iterdir()
                   if p.name.isdigit() and not all((p / m).exists() for m in COMMIT_MARKERS)),
                  key=lambda p: int(p.name))


def _try_restore(manager, step, abstract_state, config_json, workdir):
    """(None, state) for a sound checkpoint, else (what is wrong, None). The stored config is checked
    against its checksum before it is compared with this run's: a damaged one is not a refusal."""
    has_integrity = (storage.resolve(manager.directory) / str(step) / INTEGRITY_ITEM).exists()
    try:
        stored = stored_config(manager, step)
        sums = dict(manager.restore(step, args=ocp.args.Composite(
            **{INTEGRITY_ITEM: ocp.args.JsonRestore()}))[INTEGRITY_ITEM]) if has_integrity else None
    except Exception as e:  # noqa: BLE001 - any read failure means this step cannot be used
        return f"its config or checksums do not read: {_one_line(e)}", None
    if sums and "config_sha256" in sums and sums["config_sha256"] != config_digest(stored):
        return "its config does not match the checksum stored with it", None
    check_compatible(stored, config_json, workdir)
    try:
        state = restore(manager, step, abstract_state)
    except Exception as e:  # noqa: BLE001
        return f"it does not restore: {_one_line(e)}", None
    if sums is None:
        return None, state  # written before checksums were stored: nothing to verify against
    try:
        problem = checksum_problem(sums, "", state, None)
    except Exception as e:  # noqa: BLE001 - a damaged checksum record
        return f"its checksums are damaged: {_one_line(e)}", None
    return (problem, None) if problem else (None, state)


def _set_aside(directory, path, workdir: str) -> str:
    """Move a step directory out of Orbax's sight (kept, not deleted); process 0 moves, all wait."""
    dest_dir = storage.resolve(storage.join(workdir, SET_ASIDE))
    dest = dest_dir / path.name
    n = 1
    while dest.exists():
        dest, n = dest_dir / f"{path.name}.{n}", n + 1
    if jax.process_index() == 0:
        dest_dir.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"set aside {path.name}")
    return f"moved to {dest}"


def check_compatible(stored: dict, current: dict, workdir: str) -> None:
    """Refuse to resume a run whose checkpoint this config would change the meaning of (another model,
    objective, schedule, data shape: resume_fields.MEANING), or its data stream, naming each difference."""
    changed = resume_fields.changes(stored, current)
    meaning = [c for c in changed if c.kind == resume_fields.MEANING]
    if meaning:
        fields = "; ".join(f"{c.field}: checkpoint {c.stored!r}, config {c.current!r}" for c in meaning)
        raise BadInput(f"the checkpoint in {workdir} belongs to another model/config: {fields}. These change what "
                       "the checkpoint's weights mean (its model, objective or data shape), so the run cannot go on "
                       "with them: set them back (" + " ".join(resume_fields.as_flag(c) for c in meaning)
                       + "), or use a new --workdir to train with the new values")
    if "seed" in stored and stored["seed"] != current.get("seed"):
        raise ValueError(f"the run in {workdir} was started with seed {stored['seed']}, this config has seed "
                         f"{current.get('seed')}: a run's data order and noise are fixed by its seed, so resume "
                         f"with --config.seed={stored['seed']}, or use a new --workdir for the new seed")
    changed = data_stream_changes(stored, current)
    if changed and not current.get("accept_data_change", False):
        fields = "; ".join(f"{key}: checkpoint {a!r}, config {b!r}" for key, a, b in changed)
        raise ValueError(f"the run in {workdir} reads its data differently from this config ({fields}): the data "
                         "position is the step, so the resumed run would skip or repeat records of the epoch. "
                         "Set the value(s) back (" + " ".join(f"--config.{key}={a}" for key, a, _ in changed)
                         + "), or pass --config.accept_data_change=True to go on with the new ones")


# The fields that decide which records a step reads, in which order and how augmented (the data
# position is the step: batch s holds records [s B, (s + 1) B) of the seeded stream).
# resume_fields.FIELDS classifies every field; the seed has its own refusal above.
DATA_STREAM_FIELDS = tuple(k for k, kind in resume_fields.FIELDS.items() if kind == resume_fields.DATA and k != "seed")


def data_stream_changes(stored: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(field, checkpoint's value, config's value) of each DATA_STREAM_FIELDS that differs; a field the
    checkpoint does not record (an older run) is not compared."""
    def get(config, key):
        for part in key.split("."):
            if not isinstance(config, dict) or part not in config:
                return _MISSING
            config = config[part]
        return config
    out = []
    for key in DATA_STREAM_FIELDS:
        a, b = get(stored, key), get(current, key)
        if a is not _MISSING and a != b:
            out.append((key, a, b))
    return out


_MISSING = object()


def config_json(config) -> dict:
    """A JSON-able copy of an ml_collections config (round trip through its own JSON)."""
    return json.loads(config.to_json())


def load_ema(workdir: str, step: int | None = None, params_key: str = "ema_params"):
    """(EMA params, model config, step) of a run's latest (or given) checkpoint, for sampling;
    params_key="params" gives the raw (non-EMA) params instead.

    Restores onto this process's first device, whatever mesh saved it.
    """
    from dit_jax.configs.base import to_dit_config
    params, config, step = load_run(workdir, step, params_key)
    return params, to_dit_config(config["model"]), step


def load_run(workdir: str, step: int | None = None, params_key: str = "ema_params"):
    """(EMA params, the run's whole config as stored (a dict), step): `load_ema` for callers that
    need more of the run than its model, e.g. its diffusion schedule. The newest intact checkpoint,
    verified (train/verified_restore.py: every reader of a run goes through it)."""
    from dit_jax.train.verified_restore import load_run as verified
    return verified(workdir, step, params_key)
