"""Snapshots of the tracked post-hoc EMA profiles (dit_jax.train.phema), beside the checkpoints in
WORKDIR/phema/<step>/, and reading them back for the reconstruction.

A snapshot is an Orbax checkpoint of one item per tracked profile ("ema_0", "ema_1", ... in the order
of config.phema.stds) plus a JSON item that says what they are (stds, step, model). Orbax writes it
from every host together, each host its own shards of the arrays, so profiles sharded over hosts are
saved without gathering them anywhere; every snapshot is kept (the reconstruction needs them all).
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from dit_jax import storage
from dit_jax.train import orbax_noise

DIRECTORY = "phema"
META = "meta"


def ema_item(i: int) -> str:
    return f"ema_{i}"


def make_writer(workdir: str, config) -> ocp.CheckpointManager | None:
    """The snapshot writer of a run that tracks profiles (None when config.phema.stds is empty)."""
    if not tuple(config.phema.stds):
        return None
    # Its own barrier names: a snapshot and a checkpoint of the same step are written at the same time,
    # and two managers' barriers of one step would otherwise meet (the hosts of a pod then hang).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=config.async_checkpointing,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="phema"))
    return ocp.CheckpointManager(storage.join(workdir, DIRECTORY), options=options)


def due(config, step: int) -> bool:
    every = config.phema.snapshot_every
    return bool(tuple(config.phema.stds)) and every > 0 and step % every == 0


def save(manager: ocp.CheckpointManager, step: int, tracked: tuple, config) -> None:
    """Start writing the snapshot of `step` (all hosts call this). A resumed run that reaches a step
    it had already snapshotted before it was stopped recomputes the same values: the one on disk stays."""
    if step in manager.all_steps():
        return
    meta = dict(step=step, stds=[float(s) for s in config.phema.stds], batch_size=int(config.batch_size),
                model=config.model.to_dict(), objective=config.get("objective", "ddpm"))
    items = {ema_item(i): ocp.args.StandardSave(t) for i, t in enumerate(tracked)}
    items[META] = ocp.args.JsonSave(meta)
    manager.save(step, args=ocp.args.Composite(**items))


def close(manager: ocp.CheckpointManager | None) -> None:
    if manager is not None:
        manager.wait_until_finished()
        manager.close()


def _reader(workdir: str, count: int = 8) -> ocp.CheckpointManager:
    handlers = {ema_item(i): ocp.PyTreeCheckpointHandler() for i in range(count)}
    handlers[META] = ocp.JsonCheckpointHandler()
    with orbax_noise.quiet_read_only():
        return ocp.CheckpointManager(storage.join(workdir, DIRECTORY), item_handlers=handlers,
                                     options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                                          save_interval_steps=0))


def list_snapshots(workdir: str) -> list[dict]:
    """The metadata of every committed snapshot of the run in `workdir`, by step (empty when none)."""
    if not storage.resolve(storage.join(workdir, DIRECTORY)).is_dir():
        return []
    manager = _reader(workdir)
    out = []
    for step in manager.all_steps():
        meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        out.append(dict(meta))
    return sorted(out, key=lambda m: m["step"])


def load_profile(workdir: str, step: int, index: int):
    """Profile `index` of the snapshot at `step`, read onto this process's first device."""
    manager = _reader(workdir, index + 1)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    name = ema_item(index)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          manager.item_metadata(step)[name])
    args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    return manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
