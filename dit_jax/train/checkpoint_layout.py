"""What a run's checkpoint directory holds and how it is checked, for every module that reads or writes one
(train/checkpoint.py writes and resumes, train/verified_restore.py reads for the other commands,
train/lost_run.py and train/plan.py look): the item names, the commit markers, the checksums, the
committed steps and one line for a library's error. Imports nothing of train/, so none of them
import each other for it."""

from __future__ import annotations

import hashlib
import json
import re

from dit_jax import storage
from dit_jax.checksum import fingerprint, mismatches

STATE_ITEM, CONFIG_ITEM, INTEGRITY_ITEM = "state", "config", "integrity"
# Orbax writes both into a step directory when it commits it; a copy or a half-written one lacks them.
COMMIT_MARKERS = ("commit_success.txt", "_CHECKPOINT_METADATA")

# tensorstore appends the whole spec of the store it was writing (hundreds of characters of JSON)
# after the OS error; without it the reason ("File too large", "No space left") fits in the line.
_TENSORSTORE_SPEC = re.compile(r"\s*\[tensorstore_spec='.*?'\]")


def one_line(e: BaseException) -> str:
    """An Orbax/tensorstore error in one line of at most about 400 characters."""
    text = _TENSORSTORE_SPEC.sub("", " ".join(str(e).split())) or type(e).__name__
    # Orbax's messages start with the file and end with the OS error: keep both ends.
    return text if len(text) < 400 else text[:150] + " ... " + text[-240:]


def committed_steps(workdir: str) -> list[int]:
    """The steps of the run in `workdir` whose directories carry both commit markers, oldest first."""
    directory = storage.resolve(storage.join(workdir, "checkpoints"))
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and all((p / m).exists() for m in COMMIT_MARKERS))


def config_digest(config: dict) -> str:
    """The checksum of a run's config as stored beside its state (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def checksum_problem(integrity: dict, prefix: str, arrays, config: dict | None) -> str | None:
    """What the stored checksums say is wrong with `arrays` (the state, or its subtree at `prefix`,
    e.g. ".ema_params") and `config`, or None. Arrays that were saved are always finite."""
    sums, finite = fingerprint(arrays)
    if config is not None and "config_sha256" in integrity and integrity["config_sha256"] != config_digest(config):
        return "its config does not match the checksum stored with it"
    stored = {k[len(prefix):]: v for k, v in integrity["checksums"].items() if k.startswith(prefix)}
    bad = mismatches(stored, sums)
    if bad:
        return f"checksum mismatch in {len(bad)} array(s), e.g. {prefix}{bad[0]}"
    return None if finite else "it holds NaN/Inf values, which no save writes"
