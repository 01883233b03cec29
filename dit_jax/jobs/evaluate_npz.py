"""`dit-jax evaluate`: FID, sFID, IS, precision and recall of a sample batch (.npz) against an ADM
reference batch, as the ADM evaluator reports them, and/or EDM2's FD_DINOv2 (`--metrics fid,fd_dinov2`),
written as JSON beside the samples.

The metrics themselves are `dit_jax.metrics.adm_metrics`; this job reads the two batches, runs the FID
Inception over both, and prints and writes the report.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from dit_jax import storage
from dit_jax.convert.inception_torch import load_fid_inception
from dit_jax.metrics import adm_metrics, fd_dinov2
from dit_jax.exit_codes import BadInput
from dit_jax.models.inception import FIDInceptionV3, extract_features

# (key in the metrics, column of the printed table)
COLUMNS = (("fid", "FID"), ("sfid", "sFID"), ("inception_score", "IS"), ("precision", "Precision"),
           ("recall", "Recall"))


# Distances that cannot be negative; the evaluator's own computation can put them just below 0.
DISTANCES = ("fid", "sfid")


def metrics_table(metrics: dict[str, float]) -> str:
    """The metrics as two aligned lines: column names, then values (distances clamped at 0, see
    `negative_note`)."""
    shown = {k: max(v, 0.0) if k in DISTANCES else v for k, v in metrics.items()}
    return "\n".join([" | ".join(f"{label:>9}" for _, label in COLUMNS),
                      " | ".join(f"{shown[key]:>9.4f}" for key, _ in COLUMNS)])


def negative_note(metrics: dict[str, float]) -> str | None:
    """Why a distance printed as 0 was negative. When the covariance product is singular (fewer
    samples than the 2048 features, or identical statistics), the evaluator adds 1e-6 to the
    covariance diagonals inside the matrix square root only, which lowers the distance by up to
    2 x 2048 x 1e-6 = 0.0041; a distance of identical statistics then comes out as about -0.0041."""
    negative = {k: metrics[k] for k in DISTANCES if metrics[k] < 0}
    if not negative:
        return None
    raw = ", ".join(f"{k} {v:.6g}" for k, v in negative.items())
    return (f"note: printed as 0: {raw} (the evaluator regularises a singular covariance product by adding 1e-6 "
            "to the diagonals inside the square root, which lowers a distance near 0 below it); the JSON keeps "
            "the raw values")


def same_inputs(reference: str, samples: str) -> bool:
    a, b = storage.resolve(reference), storage.resolve(samples)
    if storage.is_uri(a) or storage.is_uri(b):
        return str(a) == str(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def identical_statistics(pool, ref_stats) -> bool:
    """The samples' pool statistics equal the reference's (to float32 rounding): e.g. the reference
    batch's own images, evaluated against it."""
    stats = adm_metrics.Stats.of(pool)
    return (np.allclose(stats.mu, ref_stats.mu, rtol=1e-5, atol=1e-6)
            and np.allclose(stats.sigma, ref_stats.sigma, rtol=1e-5, atol=1e-6))


METRICS = ("fid", "fd_dinov2")   # "fid": the ADM set (FID, sFID, IS, precision, recall); "fd_dinov2": EDM2's


def parse_metrics(metrics) -> tuple[str, ...]:
    """`--metrics fid,fd_dinov2` as a tuple, each name checked."""
    names = tuple(m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip())
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise BadInput(f"--metrics {','.join(names) or metrics!r}: choose from {', '.join(METRICS)} "
                       "(comma-separated, e.g. fid,fd_dinov2)")
    return names


def _adm_metrics(reference, images, inception, preprocess, batch_size, min_reference_images) -> dict:
    """FID, sFID, IS, precision and recall of `images` against the ADM reference batch, printed as a table."""
    ref = adm_metrics.load_reference_batch(reference, min_images=min_reference_images)
    variables = load_fid_inception(inception)
    model = FIDInceptionV3(preprocess=preprocess)
    t0 = time.time()
    feats = extract_features(variables, images, batch_size, model)
    ref_pool = extract_features(variables, ref.images, batch_size, model, outputs=("pool",))["pool"]
    n = len(images) + len(ref.images)
    print(f"Inception features of {n} images in {time.time() - t0:.0f} s ({n / (time.time() - t0):.1f} img/s)")
    if identical_statistics(feats["pool"], ref.stats):
        print("warning: the samples have the reference batch's own statistics (the same images?): FID is 0 by "
              "construction", flush=True)
    metrics = adm_metrics.evaluate_features(feats, ref_pool, ref.stats, ref.stats_spatial)
    print(metrics_table(metrics))
    note = negative_note(metrics)
    if note:
        print(note)
    return metrics


def _fd_dinov2(reference, images, detector, resize_mode, batch_size) -> float:
    """EDM2's FD_DINOv2 of `images` against the reference's statistics (precomputed, or of its arr_0)."""
    params, config = detector
    t0 = time.time()
    stats = fd_dinov2.statistics(fd_dinov2.dinov2_features(params, images, config, resize_mode=resize_mode,
                                                           batch_size=batch_size))
    ref = fd_dinov2.reference_statistics(reference, params, config, resize_mode=resize_mode, batch_size=batch_size)
    value = fd_dinov2.fd_dinov2(stats, ref)
    print(f"FD_DINOv2 {value:.4f} (resize {resize_mode}, {time.time() - t0:.0f} s)")
    return value


def evaluate(reference: str, samples: str, inception: str, out: str | None = None, *,
             preprocess: str = "pytorch_fid", batch_size: int = 100, min_reference_images: int = 10000,
             metrics=("fid",), dinov2: str = "", dinov2_resize: str = "torch") -> str:
    """Evaluate the `arr_0` images of the `samples` .npz against the `reference` batch: "fid" with the FID
    Inception weights in `inception`, "fd_dinov2" with the DINOv2 ViT-L/14 weights in `dinov2`; print the
    results and write the metrics JSON to `out` (default SAMPLES.metrics.json). Returns the JSON's path."""
    wanted = parse_metrics(metrics)
    if "fid" in wanted and not inception:
        raise BadInput("--metrics fid needs --inception (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    detector = fd_dinov2.load_detector(dinov2) if "fd_dinov2" in wanted else None   # fail before the work
    if same_inputs(reference, samples):
        print(f"warning: the reference batch and the samples are the same file ({samples}): the distances below "
              "compare it with itself and say nothing about a model", flush=True)
    images = adm_metrics.load_sample_batch(samples)
    if len(images) < 2:
        raise ValueError(f"{samples}: {len(images)} image(s); FID needs at least 2 (the paper uses 50,000)")
    if len(images) < 50_000:
        print(f"note: {len(images)} samples; FID and sFID are biased upward below the paper's 50,000")
    results = {}
    if "fid" in wanted:
        results.update(_adm_metrics(reference, images, inception, preprocess, batch_size, min_reference_images))
    if detector is not None:
        results["fd_dinov2"] = _fd_dinov2(reference, images, detector, dinov2_resize, batch_size)
    out = out or os.path.splitext(samples)[0] + ".metrics.json"
    extra = {"dinov2_resize": dinov2_resize} if detector is not None else {}
    storage.write_bytes_atomic(out, json.dumps(
        {**{k: float(v) for k, v in results.items()}, "num_samples": int(len(images)),
         "reference": str(storage.resolve(reference)), "preprocess": preprocess, **extra}, indent=2).encode())
    return out
