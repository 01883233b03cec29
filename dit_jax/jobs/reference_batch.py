"""`dit-jax reference-batch`: an ADM-layout reference batch (.npz) from any TFDS image dataset.

The images get the ADM center crop to `image_size`; the FID Inception's pool and spatial statistics
are taken over all of them (or the first `max_images` of a seeded shuffle), and `num_images` of them
are kept as arr_0 for precision and recall.
"""

from __future__ import annotations

import time

import numpy as np

from dit_jax.convert.inception_torch import load_fid_inception
from dit_jax.data.pipeline import DecodeCrop, open_source
from dit_jax.metrics.adm_metrics import write_reference_batch
from dit_jax.models.inception import FIDInceptionV3, extract_features


def replace_problem(path: str) -> str | None:
    """Why the existing file `path` may not be replaced by a reference batch (it is not one), or None."""
    try:
        with np.load(path) as z:
            if {"mu", "sigma", "arr_0"} <= set(z.files):
                return None
    except (OSError, ValueError):
        pass
    return f"--out {path} exists and is not a reference batch; --force replaces only a reference batch"


def reference_batch(dataset: str, data_dir: str, split: str, image_size: int, inception: str, out: str, *,
                    preprocess: str = "pytorch_fid", num_images: int = 10000, max_images: int = 0,
                    batch_size: int = 100, chunk: int = 1000, seed: int = 0) -> tuple[int, int]:
    """Write the reference batch to `out`; returns (images in the statistics, images kept as arr_0)."""
    source = open_source(dataset, data_dir, split)
    n = len(source) if not max_images else min(max_images, len(source))
    order = np.random.default_rng(seed).permutation(len(source))[:n]
    crop = DecodeCrop(image_size, 3, np.iinfo(np.int32).max)
    variables, model = load_fid_inception(inception), FIDInceptionV3(preprocess=preprocess)
    pools, spatials, kept, t0 = [], [], [], time.time()
    for start in range(0, n, chunk):
        images = np.stack([crop.map({**source[int(i)], "_key": int(i)})["image"] for i in order[start:start + chunk]])
        feats = extract_features(variables, images, batch_size, model, outputs=("pool", "spatial"))
        pools.append(feats["pool"])
        spatials.append(feats["spatial"])
        if sum(len(k) for k in kept) < num_images:
            kept.append(images)
        done = min(start + chunk, n)
        rate = done / (time.time() - t0)
        print(f"{done}/{n} images, {rate:.1f} img/s, ETA {(n - done) / rate:.0f} s", flush=True)
    kept_images = np.concatenate(kept)
    write_reference_batch(out, kept_images, np.concatenate(pools), np.concatenate(spatials),
                          n_images=min(num_images, len(kept_images)))
    return n, min(num_images, len(kept_images))
