"""The demo dataset: scikit-learn's 1,797 8x8 handwritten digits as a TFDS ArrayRecord dataset.

It ships inside scikit-learn, so the laptop demo trains with no download. Built once into a data_dir
(default `~/.cache/dit_jax/tfds`, or $DIT_JAX_DATA_DIR) and read back like any TFDS dataset with
`tfds.data_source('digits', data_dir=...)`, without TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds

NAME = "digits"
VERSION = "1.0.0"
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


def default_data_dir() -> str:
    """Where dit-jax keeps its TFDS datasets unless a config says otherwise."""
    return os.environ.get("DIT_JAX_DATA_DIR") or os.path.expanduser("~/.cache/dit_jax/tfds")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8, 1), labels int64 (1797,)) in scikit-learn's order.

    scikit-learn's pixels are counts 0..16; scaled to 0..255 so the images look like any other uint8 image.
    Other modules (the demo's quality score) depend on exactly this conversion.
    """
    from sklearn.datasets import load_digits  # Imported here: only the build needs scikit-learn.

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's handwritten digits, 'train' = all 1,797 images (the demo trains on all of it)."""

    # Not registered with TFDS: reading goes through the files on disk (tfds.data_source falls back to
    # them), so the name cannot clash with a future TFDS catalog entry.
    name = NAME
    # TFDS looks for a checksums file beside the builder's code through the `importlib_resources`
    # backport, which it does not install on Python >= 3.9; there is nothing to download anyway.
    code_path = None
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "sklearn.datasets.load_digits, pixels round(x * 255 / 16) as uint8."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="The 1,797 8x8 handwritten digits that scikit-learn ships (UCI optdigits test set).",
            features=tfds.features.FeaturesDict({
                # A raw Tensor, not an Image: encoding a numpy array into an Image feature needs TensorFlow.
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=[str(i) for i in range(NUM_CLASSES)]),
            }),
            supervised_keys=("image", "label"),
            # Keep scikit-learn's order so record i is sklearn's digit i.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        images, labels = digits_arrays()
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": label}


def is_built(data_dir: str) -> bool:
    return os.path.exists(os.path.join(data_dir, NAME, VERSION, "dataset_info.json"))


@contextlib.contextmanager
def quiet_build():
    """No TFDS chatter while the digits are built: TFDS prints "Downloading and preparing dataset ..." and
    "... downloaded and prepared to <temporary directory>" to stdout, and progress bars to stderr, which
    for a local build of 1,797 images with no download say nothing a user needs (and name a temporary
    directory that is gone a moment later). Errors still raise."""
    from tensorflow_datasets.core.utils import tqdm_utils
    shown = getattr(tqdm_utils, "_active", True)  # the user's own setting, restored after
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(shown)


def ensure_digits(data_dir: str | None = None) -> str:
    """Builds the digits dataset into `data_dir` if it is not there yet; returns the data_dir.

    Safe when several processes (the hosts of a job, or tests) call it at once: each builds into its
    own temporary directory beside the target and renames the finished version directory into place;
    a rename that loses the race finds the winner's copy and drops its own.
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    if is_built(data_dir):
        return data_dir
    os.makedirs(os.path.join(data_dir, NAME), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{NAME}-build-", dir=data_dir)
    try:
        builder = Digits(data_dir=tmp, file_format=tfds.core.FileFormat.ARRAY_RECORD)
        with quiet_build():
            builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
        try:
            os.rename(os.path.join(tmp, NAME, VERSION), os.path.join(data_dir, NAME, VERSION))
        except OSError:
            if not is_built(data_dir):  # Not a lost race: a real failure.
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_dir
