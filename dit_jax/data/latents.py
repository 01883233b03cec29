"""Latent datasets: the VAE posterior of every image and of its horizontal flip, as TFDS ArrayRecord.

Each record holds `label`, `mean`, `std`, `mean_flip`, `std_flip` ((h, w, 4) each, float16 or
float32), and with `extract-latents --with-images` the ADM-cropped uint8 `image` that REPA's encoders read. Training then draws a fresh flip and a fresh posterior sample `mean + std * noise` every
step, as the reference does when it encodes images inside its loop; storing one sample per image
(as fast-DiT does) would freeze that augmentation. `dit-jax extract-latents`
(dit_jax.jobs.extract_latents) writes them; the training pipeline (dit_jax.data.pipeline) reads them.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds

from dit_jax import storage

VERSION = "1.0.0"
LATENT_KEYS = ("mean", "std", "mean_flip", "std_flip")


def dataset_builder(name: str, shard_files: list[str], latent_shape: tuple, dtype: str, image_shape: tuple | None = None):
    """The TFDS builder class of latent dataset `name`, whose records come from `shard_files` (.npz files of
    `label` and the LATENT_KEYS arrays, in order). image_shape: records also carry the uint8 `image` (REPA)."""
    keys = LATENT_KEYS + (("image",) if image_shape else ())
    class LatentBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)
        code_path = None

        def _info(self):
            feat = lambda: tfds.features.Tensor(shape=latent_shape, dtype=np.dtype(dtype))  # noqa: E731
            return self.dataset_info_from_configs(
                description="VAE posterior mean/std of each image and of its horizontal flip (dit-jax).",
                features=tfds.features.FeaturesDict({"label": tfds.features.Scalar(np.int64),
                                                     **{k: feat() for k in LATENT_KEYS},
                                                     **({"image": tfds.features.Tensor(shape=image_shape, dtype=np.uint8)}
                                                        if image_shape else {})}),
                disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            i = 0
            for path in shard_files:
                with np.load(io.BytesIO(storage.read_bytes(path))) as z:
                    for j in range(len(z["label"])):
                        yield i, {"label": z["label"][j], **{k: z[k][j] for k in keys}}
                        i += 1

    return type(f"Latents_{name}", (LatentBuilder,), {"name": name}, skip_registration=True)
