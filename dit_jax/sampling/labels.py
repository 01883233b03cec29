"""The class labels of an evaluation batch: DiT's uniform random labels, or exactly N / num_classes
of each class (the 2025 protocol of RAE and REPA-E: 50 per class for FID-50K).

Both are pure functions of the global sample index, so the labels, and therefore the images, do
not depend on how many hosts or devices share the work, nor on the batch a sample falls in.
"""

from __future__ import annotations

import numpy as np

from dit_jax.exit_codes import BadInput

LABEL_MODES = ("random", "balanced")


def balanced_labels(indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Sample i gets class i mod num_classes: the first num_classes samples are one of each class, and
    any N that num_classes divides holds exactly N / num_classes of each (indices past N, the padding
    of the last batch, are dropped with their images)."""
    return (np.asarray(indices, np.int64) % num_classes).astype(np.int32)


def check_labels(mode: str, num_samples: int, num_classes: int) -> None:
    """BadInput unless `mode` is known and, when balanced, num_classes divides num_samples."""
    if mode not in LABEL_MODES:
        raise BadInput(f"--labels must be one of {LABEL_MODES}, got {mode!r}")
    if mode == "balanced" and num_samples % num_classes:
        lower = num_samples // num_classes * num_classes
        raise BadInput(f"--labels balanced: --num-samples {num_samples} is not divisible by the model's "
                       f"{num_classes} classes; use a multiple such as {max(lower, num_classes)} or "
                       f"{lower + num_classes}")


def labels_for(mode: str, seed: int, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """The labels of the samples at `indices` (global sample numbers) under `mode`."""
    if mode == "balanced":
        return balanced_labels(indices, num_classes)
    from dit_jax.sampling.run_sampler import sample_labels
    return sample_labels(seed, indices, num_classes)
