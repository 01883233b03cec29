"""`dit-jax train --dry_run`: every check a run makes before its first step, and the run's plan, with
nothing written (no workdir, lock, dataset build, compilation cache or distributed join).

What it checks: every config field; the files the config names (VAE, init weights, FID reference
batch and Inception weights); the dataset, opened and read at its first and last records; the
workdir (a directory, or a path below a writable one); the mesh against the device count and the
batch against the mesh and the hosts. With `files=False` (a launch machine that does not hold the
hosts' disks) only the config, the mesh and the batch are checked.
"""

from __future__ import annotations

import os

from dit_jax import storage
from dit_jax.data.digits import NAME as DIGITS, default_data_dir
from dit_jax.models.dit import param_count
from dit_jax.parallel.mesh import mesh_shape
from dit_jax.train import evaluators as evaluation
from dit_jax.configs.base import to_dit_config
from dit_jax.train.validation import config_problems, raise_problems


def dry_run(config, workdir: str, *, devices: int, hosts: int, files: bool = True) -> list[str]:
    """The plan's lines; a ValueError naming what a real run would fail on. When a store the config names
    cannot be reached from here, every other check is made and the last line says which were not, and why
    (`UNCHECKED`)."""
    unreachable = None
    try:
        raise_problems(config_problems(config, files=files))
    except storage.StoreUnreachable as e:
        unreachable, files = str(e), False
        raise_problems(config_problems(config, files=False))
    model = to_dit_config(config.model)
    mesh = mesh_shape(config.mesh, devices)
    split = mesh["data"] * mesh["fsdp"]  # the batch is split over data x fsdp; tensor shares examples
    if config.batch_size % split:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {split} devices that split the "
                         f"batch (mesh data={mesh['data']} x fsdp={mesh['fsdp']}); use a multiple of {split}")
    if config.batch_size % hosts:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {hosts} hosts")
    records = _dataset(config.data) if files else None
    lines = [
        f"model {config.model.name}: {model.depth} blocks, hidden {model.hidden_size}, {param_count(model):,} "
        f"parameters; objective {config.get('objective', 'ddpm')}" + _repa_note(config),
        f"data {config.data.name} ({config.data.split}) in {config.data.data_dir or default_data_dir()}: "
        + (_records_line(records) if files else "not checked (--nocheck_files)")
        + (f"; latents {config.data.latents!r}" + (f", VAE {config.data.vae}" if config.data.vae else "")
           if config.data.latents else "; pixels"),
        f"mesh {' x '.join(f'{k}={v}' for k, v in mesh.items())} over {devices} devices; batch {config.batch_size} global, "
        f"{config.batch_size // split} per device, {config.batch_size // hosts} per host ({hosts} host(s))",
        _steps_line(config, records),
        f"checkpoints every {config.checkpoint_every:,} steps"
        + (f" or {config.checkpoint_every_minutes:g} minutes" if config.checkpoint_every_minutes else "")
        + f", the last {config.keep_checkpoints} kept, in {storage.join(workdir, 'checkpoints')}",
        *[f"evaluation {name}: {section.kind}, {section.num_samples:,} samples "
          + (f"every {section.every:,} steps and " if section.every else "") + "at the end"
          for name, section in evaluation.active(config)],
        f"sample grids every {config.sample.every:,} steps" if config.sample.every else "sample grids off",
        _workdir_line(workdir, files, config.get("start_over", False)),
    ]
    if unreachable:
        lines.append(f"{UNCHECKED} the dataset, the files the config names and the workdir ({unreachable})")
    return lines


UNCHECKED = "not checked:"


def _repa_note(config) -> str:
    """REPA replaces the objective's loss by its own (train/repa.py)."""
    r = config.get("repa")
    if not r or not r.encoder:
        return ""
    return (f" replaced by REPA's (encoder {r.encoder}, projector after block {r.encoder_depth}, proj_coeff "
            f"{r.proj_coeff}, path {r.path}, weighting {r.weighting})")


def _records_line(records: int | None) -> str:
    return "built on the first run (the demo's digits)" if records is None else f"{records:,} records"


def _dataset(data) -> int | None:
    """Records in the training split, read as training will; None for the demo's digits not built yet
    (a run builds them, a dry run writes nothing)."""
    from dit_jax.data.source_check import built_versions, check_dataset
    storage.require_local(data.data_dir, "data.data_dir")
    if data.name == DIGITS and not built_versions(DIGITS, data.data_dir or default_data_dir()):
        return None
    return check_dataset(data.name, data.data_dir, data.split)


def _steps_line(config, records: int | None) -> str:
    line = f"{config.total_steps:,} steps"
    if records:
        epoch = records / config.batch_size
        line += (f"; an epoch is {epoch:,.0f} steps, so {config.total_steps * config.batch_size:,} images are "
                 f"{config.total_steps / epoch:,.1f} epochs")
    return line


def _workdir_line(workdir: str, files: bool, start_over: bool = False) -> str:
    """Where the run writes; a ValueError if a local workdir cannot be written."""
    from dit_jax.workdir_lock import workdir_problem
    problem = workdir_problem(workdir)
    if problem:
        raise ValueError(problem)
    if storage.is_uri(workdir) or not files:
        return f"workdir {workdir}: not checked here (the hosts write it with their own credentials)"
    path = os.path.abspath(os.path.expanduser(workdir))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir}: {existing} is not writable by this user; choose another directory")
    from dit_jax.train.checkpoint_layout import committed_steps
    steps = committed_steps(path)
    from dit_jax.train import lost_run
    lost = None if steps else lost_run.problem(path)
    if lost and not start_over:
        raise ValueError(lost)
    if lost:
        return f"workdir {path}: no checkpoint; starts over at step 0 (--config.start_over=True)"
    if steps:
        return f"workdir {path}: resumes from step {steps[-1]:,} (committed checkpoints {steps})"
    return f"workdir {path}: " + ("exists, no checkpoint: starts at step 0" if os.path.isdir(path)
                                  else f"made under {existing}: starts at step 0")


