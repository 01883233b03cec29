"""A workdir that shows a run happened but holds no checkpoint: refused, not silently started over.

Without this check, a run whose checkpoints/ was deleted (or never copied along with the rest) would
start again at step 1 and replace its metrics rows without a word. `--config.start_over=True` starts
such a workdir over on purpose (the old metrics rows are replaced; checkpoints_set_aside/ is kept).
"""

from __future__ import annotations

import jax

from dit_jax import storage
from dit_jax.exit_codes import BadInput
from dit_jax.train.checkpoint_layout import committed_steps


def traces(workdir: str) -> list[str]:
    """What in `workdir` shows that a run wrote it (besides checkpoints)."""
    root = storage.resolve(workdir)
    if not root.is_dir():
        return []
    found = []
    metrics = root / "metrics.jsonl"
    if metrics.exists() and metrics.stat().length > 0:
        found.append(f"metrics.jsonl ({metrics.stat().length} bytes)")
    for name in ("goodput.json", "eval_scores.json", "demo_scores.json"):
        if (root / name).exists():
            found.append(name)
    for name, what in (("tensorboard", "TensorBoard events"), ("samples", "sample grids"),
                       ("checkpoints_set_aside", "damaged checkpoints set aside")):
        if (root / name).is_dir() and any((root / name).iterdir()):
            found.append(f"{name}/ ({what})")
    return found


def problem(workdir: str) -> str | None:
    """Why training `workdir` would silently start a run over, or None."""
    if committed_steps(workdir):
        return None
    found = traces(workdir)
    if not found:
        return None
    checkpoints = storage.resolve(storage.join(workdir, "checkpoints"))
    missing = ("checkpoints/ is missing" if not checkpoints.is_dir()
               else "checkpoints/ holds no committed checkpoint")
    return (f"{workdir} holds a training run ({', '.join(found)}) but {missing}: training would start again at "
            "step 1 and replace its metrics. Put its checkpoints/ back to resume it, use a new --workdir, or pass "
            "--config.start_over=True to start this run over on purpose")


def check(workdir: str, start_over: bool, say=print) -> None:
    """Refuse (BadInput) a workdir whose checkpoints are lost, unless `start_over`; decided by process 0
    and shared, so that no host of a multi-host run starts alone."""
    found = problem(workdir) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils
        if multihost_utils.broadcast_one_to_all(np.int32(found is not None)) and found is None:
            found = f"process 0 found the checkpoints of {workdir} lost (see its message)"
    if found is None:
        return
    if not start_over:
        raise BadInput(found)
    say(f"starting over (--config.start_over=True): {found.split(': training would')[0]}")
