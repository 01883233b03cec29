"""A finished run's final scores, read back instead of evaluated again.

`dit-jax train` on a run already at total_steps has nothing left to train; it used to run the final
evaluation again (72 s for the demo on 2 CPU cores) and rewrite the same scores. When
WORKDIR/eval_scores.json holds the scores of that step by the same evaluators (their descriptions:
kind, sample count, sampler), they are printed and returned as they are.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from dit_jax import storage

NAME = "eval_scores.json"


def written(workdir: str, evaluators, step: int) -> dict | None:
    """The scores in WORKDIR/eval_scores.json if they are step `step`'s by these evaluators, else None."""
    path = storage.join(workdir, NAME)
    if not storage.exists(path):
        return None
    try:
        scores = json.loads(storage.read_bytes(path))
    except ValueError:  # a torn or foreign file: evaluate again
        return None
    if not isinstance(scores, dict) or scores.get("step") != step:
        return None  # an older file has no step: evaluate again
    if scores.get("evaluators") != {ev.name: ev.describe() for ev in evaluators}:
        return None
    return scores


def reuse(workdir: str, evaluators, start: int, total: int, say) -> dict | None:
    """The final scores of a run that started this session at its last step (`start == total`) and has
    them written already, printed with `say`; None when the final evaluation is to run. Process 0 decides
    for every host, so that all of them sample together or none does."""
    if start != total or not evaluators:
        return None
    scores = written(workdir, evaluators, total) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        if not multihost_utils.broadcast_one_to_all(np.int32(scores is not None)):
            return None
        scores = scores if scores is not None else written(workdir, evaluators, total) or {}
    if scores is None:
        return None
    from dit_jax.train.evaluators import describe
    say(f"the final scores of step {total} are in {storage.join(workdir, NAME)}: not evaluated again")
    for ev in evaluators:
        if f"eval/{ev.name}/seconds" in scores:
            say(describe(ev, scores))
    return scores
