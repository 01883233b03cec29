"""`dit-jax evaluate`: FID, sFID, IS, precision and recall of a sample batch (.npz) against an ADM
reference batch, as the ADM evaluator reports them, written as JSON beside the samples.

The metrics themselves are `dit_jax.evaluate.adm_metrics`; this job reads the two batches, runs the FID
Inception over both, and prints and writes the report.
"""

from __future__ import annotations

import json
import os
import time

from dit_jax import storage
from dit_jax.convert.inception_torch import load_fid_inception
from dit_jax.evaluate import adm_metrics
from dit_jax.models.inception import FIDInceptionV3, extract_features

# (key in the metrics, column of the printed table)
COLUMNS = (("fid", "FID"), ("sfid", "sFID"), ("inception_score", "IS"), ("precision", "Precision"),
           ("recall", "Recall"))


def metrics_table(metrics: dict[str, float]) -> str:
    """The metrics as two aligned lines: column names, then values."""
    return "\n".join([" | ".join(f"{label:>9}" for _, label in COLUMNS),
                      " | ".join(f"{metrics[key]:>9.4f}" for key, _ in COLUMNS)])


def evaluate(reference: str, samples: str, inception: str, out: str | None = None, *,
             preprocess: str = "pytorch_fid", batch_size: int = 100, min_reference_images: int = 10000) -> str:
    """Evaluate the `arr_0` images of the `samples` .npz against the `reference` batch with the FID
    Inception weights in `inception`; print the table and write the metrics JSON to `out` (default
    SAMPLES.metrics.json). Returns the JSON's path."""
    ref = adm_metrics.load_reference_batch(reference, min_images=min_reference_images)
    images = adm_metrics.load_sample_batch(samples)
    if len(images) < 2:
        raise ValueError(f"{samples}: {len(images)} image(s); FID needs at least 2 (the paper uses 50,000)")
    if len(images) < 50_000:
        print(f"note: {len(images)} samples; FID and sFID are biased upward below the paper's 50,000")
    variables = load_fid_inception(inception)
    model = FIDInceptionV3(preprocess=preprocess)
    t0 = time.time()
    feats = extract_features(variables, images, batch_size, model)
    ref_pool = extract_features(variables, ref.images, batch_size, model, outputs=("pool",))["pool"]
    n = len(images) + len(ref.images)
    print(f"Inception features of {n} images in {time.time() - t0:.0f} s ({n / (time.time() - t0):.1f} img/s)")
    metrics = adm_metrics.evaluate_features(feats, ref_pool, ref.stats, ref.stats_spatial)
    print(metrics_table(metrics))
    out = out or os.path.splitext(samples)[0] + ".metrics.json"
    storage.write_bytes_atomic(out, json.dumps(
        {**{k: float(v) for k, v in metrics.items()}, "num_samples": int(len(images)),
         "reference": str(storage.resolve(reference)), "preprocess": preprocess}, indent=2).encode())
    return out
