"""The one way every command reads weights out of a training run (`sample --workdir`, `export-weights`,
experiments): the newest intact checkpoint, verified as `train` verifies one before resuming.

A step is used only if it has Orbax's commit markers, its config reads and matches the checksum stored
beside it, its arrays restore, match their stored checksums and are finite, and the model its config
names has exactly those arrays. A newer step that fails is skipped with a warning naming it and why;
nothing is moved or deleted (a reader never changes the run: `train` sets damaged steps aside). When
no step is intact, or the step asked for is not, one BadInput line names the run and the problem.
"""

from __future__ import annotations

import dataclasses
import sys

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from dit_jax import storage
from dit_jax.exit_codes import BadInput
from dit_jax.train import orbax_noise
from dit_jax.train.checkpoint_layout import (COMMIT_MARKERS, CONFIG_ITEM, INTEGRITY_ITEM, STATE_ITEM,  # noqa: F401
                                             checksum_problem, config_digest, one_line as _one_line)

def step_dirs(workdir: str) -> list:
    """The run's step directories, newest first; BadInput if `workdir` is not a training run."""
    checkpoints = storage.resolve(storage.join(workdir, "checkpoints"))
    if not checkpoints.is_dir():
        raise BadInput(f"{workdir} is not a training run (no checkpoints/ in it): pass the --workdir of a "
                       "`dit-jax train` run")
    steps = sorted((p for p in checkpoints.iterdir() if p.name.isdigit() and p.is_dir()), key=lambda p: -int(p.name))
    if not steps:
        raise BadInput(f"no checkpoint in {checkpoints}: train first (`dit-jax train --workdir {workdir}`), or "
                       "pass the --workdir of a run that saved one")
    return steps


def load_run(workdir: str, step: int | None = None, params_key: str = "ema_params", warn=None):
    """(params at `params_key` ("ema_params" or "params"), the run's config as stored (a dict), step) of
    the newest intact checkpoint of `workdir` (or of `step`, which must be intact), on this process's
    first device whatever mesh saved it. `warn(line)` is told of each newer step skipped (default: stderr)."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    dirs = step_dirs(workdir)
    if step is not None:
        chosen = [d for d in dirs if int(d.name) == step]
        if not chosen:
            raise BadInput(f"{workdir} has no checkpoint at step {step}; it has steps "
                           f"{sorted(int(d.name) for d in dirs)}")
        params, config, problem = _read(chosen[0], params_key)
        if problem:
            raise BadInput(f"checkpoint step {step} of {workdir} is damaged ({problem}): leave out --step to use "
                           "the newest intact one")
        return params, config, step
    skipped = []
    for path in dirs:
        params, config, problem = _read(path, params_key)
        if problem is None:
            for s, why in skipped:
                warn(f"warning: checkpoint step {s} of {workdir} is damaged ({why}); using step {path.name}, "
                     "the newest intact checkpoint")
            return params, config, int(path.name)
        skipped.append((int(path.name), problem))
    raise BadInput(f"no intact checkpoint in {workdir}: " + "; ".join(f"step {s}: {why}" for s, why in skipped)
                   + f". `dit-jax train --workdir {workdir}` sets damaged steps aside; to use this run, restore "
                   "its checkpoints/ from a copy")


def _read(path, params_key: str):
    """(params, config, None) of an intact step directory, else (None, None, what is wrong)."""
    missing = [m for m in COMMIT_MARKERS if not (path / m).exists()]
    if missing:
        return None, None, f"no commit marker {missing[0]} (copied or half-written)"
    handler = ocp.CompositeCheckpointHandler(**{STATE_ITEM: ocp.PyTreeCheckpointHandler(),
                                                CONFIG_ITEM: ocp.JsonCheckpointHandler(),
                                                INTEGRITY_ITEM: ocp.JsonCheckpointHandler()})
    has_integrity = (path / INTEGRITY_ITEM).exists()
    # A failed read's tensorstore tasks report "Event loop is closed" as the checkpointer closes, and
    # Orbax logs the failure with its traceback: this function reports it in one line instead.
    orbax_noise.quiet_after_failure()
    try:
        with ocp.Checkpointer(handler) as ckptr:
            items = {CONFIG_ITEM: ocp.args.JsonRestore()}
            if has_integrity:
                items[INTEGRITY_ITEM] = ocp.args.JsonRestore()
            meta = ckptr.restore(path, ocp.args.Composite(**items))
            config = dict(meta[CONFIG_ITEM])
            state = ckptr.restore(path, ocp.args.Composite(**{STATE_ITEM: _partial(ckptr, path, params_key)}))
    except Exception as e:  # noqa: BLE001 - whatever the library raises, this step cannot be used
        return None, None, f"it does not read: {_one_line(e)}"
    params = state[STATE_ITEM][params_key]
    try:
        problem = (checksum_problem(dict(meta[INTEGRITY_ITEM]), f".{params_key}", params, config) if has_integrity
                   else None) or _shape_problem(config, params)
    except Exception as e:  # noqa: BLE001 - a damaged integrity record or config
        problem = f"its config or checksums are damaged: {_one_line(e)}"
    return (None, None, problem) if problem else (params, config, None)


def _partial(ckptr, path, params_key: str):
    """Only `params_key` of the state, read straight onto one device (partial restore skips the optimizer)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    tree = ckptr.metadata(path).item_metadata[STATE_ITEM][params_key]
    target = {params_key: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), tree)}
    return ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)


def _shape_problem(config: dict, params) -> str | None:
    """Whether the model the stored config names has exactly these arrays (a config damaged into another
    valid one would otherwise fail later, deep in sampling)."""
    from dit_jax.models.dit import DiT, example_inputs
    from dit_jax.configs.base import to_dit_config
    model = to_dit_config(config["model"])
    plain = dataclasses.replace(model, attention="xla", remat="none")  # the same arrays, traced on any backend
    expected = jax.eval_shape(lambda: DiT(plain).init(jax.random.key(0), *example_inputs(plain)))["params"]
    shapes = lambda tree: {jax.tree_util.keystr(p): tuple(x.shape) for p, x in  # noqa: E731
                           jax.tree_util.tree_flatten_with_path(tree)[0]}
    if (config.get("repa") or {}).get("encoder"):  # REPA's projectors sit beside the DiT's arrays
        from dit_jax.models.repa import PROJECTORS
        params = {k: v for k, v in params.items() if k != PROJECTORS}
    want, got = shapes(nn.unbox(expected)), shapes(params)
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[0][0]
        return f"its config's model ({model.depth} blocks, hidden {model.hidden_size}) does not match its arrays " \
               f"(e.g. {diff})"
    return None
