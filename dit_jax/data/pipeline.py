"""Training input: a TFDS ArrayRecord source read through Grain, per host, handed to JAX as global arrays.

    source = open_source(name, data_dir, split)       # random access, no TensorFlow
    loader = make_train_loader(config.data, global_batch_size, seed, start_step)
    it = iter(loader)
    batch = to_global(next(it), sharding)              # {'image': uint8 (B, H, W, C), 'label': (B,)}
    close(it)                                          # stops its worker processes

    batches = DevicePrefetch(iter(loader), sharding)   # the same global batches, sent 2 steps ahead

The data position is the global step: global batch s holds positions [s B, (s + 1) B) of one
seeded record stream (each epoch reshuffled), and each host reads its contiguous slice of it, so
the hosts' records are disjoint and together cover every epoch. A run resumes at step s on any
number of hosts, with any worker_count, and sees the batches the uninterrupted run saw. Decoding,
the ADM crop and the flip run in Grain worker processes (data.worker_count); the flip's
randomness comes from Grain's per-record generator, seeded from the loader seed and the record's
position in the stream, so a seed fixes the data order and augmentation.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Mapping

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from dit_jax.data import preprocess
from dit_jax.data.digits import NAME as DIGITS, default_data_dir, ensure_digits
from dit_jax.data.image_folder import LAYOUT, folder_name_for
from dit_jax.data.latents import LATENT_KEYS


class DatasetNotFoundError(FileNotFoundError):
    """The named dataset is not prepared in the data_dir; the message says how to prepare it."""


def _how_to_prepare(name: str, data_dir: str) -> str:
    if name.startswith("imagenet2012"):
        return (
            "ImageNet cannot be downloaded automatically. Either\n"
            "  (a) download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org into "
            "MANUAL_DIR and run\n"
            f"      tfds build imagenet2012 --manual_dir MANUAL_DIR --data_dir {data_dir} --file_format array_record\n"
            "      (TFDS's own imagenet2012 build may need TensorFlow installed; reading it here does not), or\n"
            "  (b) extract the training images into class folders (" + LAYOUT + ") and run\n"
            f"      dit-jax build-dataset SRC_DIR --name imagenet_folder --data_dir {data_dir}\n"
            "      then train with --config.data.name=imagenet_folder.")
    folder = folder_name_for(name)
    return (f"Build it into {data_dir} with TFDS (`tfds build {name} --data_dir {data_dir} --file_format "
            f"array_record`), or from an image folder ({LAYOUT}) with "
            f"`dit-jax build-dataset SRC_DIR --name {folder} --data_dir {data_dir}`"
            + (f" and train with --config.data.name={folder}" if folder != name else "")
            + ", or point data.data_dir at the directory that holds it.")


def open_source(name: str, data_dir: str, split: str = "train"):
    """A random-access source of {'image', 'label', ...} records of a TFDS ArrayRecord dataset, without TF.

    'digits' is built on first use. Images stored encoded (tfds.features.Image) come back as their bytes
    (tfds.decode.SkipDecoding) and are decoded by the pipeline, where PIL converts every image to the
    configured channels; raw Tensor images come back as uint8 arrays.
    """
    data_dir = data_dir or default_data_dir()
    from dit_jax.storage import require_local
    require_local(data_dir, "data_dir")
    if name == DIGITS:
        ensure_digits(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # noqa: BLE001 -- unknown name, no files, or a catalog builder that fails to load.
        raise DatasetNotFoundError(f"dataset {name!r} not found in data_dir {data_dir!r} ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}).\n"
                                   + _how_to_prepare(name, data_dir)) from e
    if not prepared:
        raise DatasetNotFoundError(f"dataset {name!r} is not prepared in data_dir {data_dir!r} (looked for "
                                   f"{builder.data_dir}).\n" + _how_to_prepare(name, data_dir))
    features = builder.info.features
    is_latent = "mean" in features.keys()
    missing = ({"label", *LATENT_KEYS} if is_latent else {"image", "label"}) - set(features.keys())
    if missing:
        raise ValueError(f"dataset {name!r} has features {sorted(features.keys())}; training needs 'image' and "
                         f"'label', or a latent dataset's 'label' and {list(LATENT_KEYS)} (missing {sorted(missing)})")
    decoders = ({"image": tfds.decode.SkipDecoding()}
                if not is_latent and isinstance(features["image"], tfds.features.Image) else None)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
    except Exception as e:  # noqa: BLE001
        formats = builder.info.file_format
        raise ValueError(f"cannot read split {split!r} of {name!r} in {data_dir!r} as a data source (splits "
                         f"{sorted(builder.info.splits.keys())}, file format {formats}; tfds.data_source reads "
                         f"only ArrayRecord: rebuild with --file_format array_record): {e}") from e


@dataclasses.dataclass(frozen=True)
class KeyedSource:
    """A source whose records carry their own key, so errors can name the bad record."""

    source: Any

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int) -> dict:
        return {**self.source[key], "_key": int(key)}

    def __repr__(self) -> str:  # Grain checks a restored state against repr(source): keep it stable.
        return f"KeyedSource({self.source!r})"


@dataclasses.dataclass(frozen=True)
class DecodeCrop(grain.transforms.Map):
    """Record -> {'image': uint8 (S, S, C), 'label': int32}: decode, check the label, ADM crop to S."""

    image_size: int
    channels: int
    num_classes: int

    def map(self, element: dict) -> dict:
        label = int(element["label"])
        if not 0 <= label < self.num_classes:
            raise ValueError(f"record {element['_key']} has label {label}, outside [0, {self.num_classes}) "
                             f"= data.num_classes: the config and the dataset disagree")
        image = element["image"]
        if isinstance(image, (bytes, np.bytes_)):
            image = preprocess.decode_image(image, self.channels)
        else:
            image = preprocess.to_channels(np.asarray(image, np.uint8), self.channels)
        if image.shape[:2] != (self.image_size, self.image_size):
            # On an image already at the target size the ADM crop is the identity, so it is skipped there.
            image = preprocess.adm_center_crop(image, self.image_size)
        return {"image": image, "label": np.int32(label)}


class RandomFlip(grain.transforms.RandomMap):
    """Horizontal flip with probability 1/2 from Grain's per-record generator (deterministic given the seed)."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        return {**element, "image": preprocess.random_flip(element["image"], rng)}


class PickLatent(grain.transforms.RandomMap):
    """Latent record -> {'mean', 'std', 'label'} of the image or, with probability 1/2, its flip.

    The same single draw from Grain's per-record generator as RandomFlip, so a latent dataset sees
    the flips the image pipeline would have made."""

    def __init__(self, num_classes: int, flip: bool):
        self.num_classes, self.flip = num_classes, flip

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        label = int(element["label"])
        if not 0 <= label < self.num_classes:
            raise ValueError(f"record {element['_key']} has label {label}, outside [0, {self.num_classes}) "
                             f"= data.num_classes: the config and the dataset disagree")
        flipped = self.flip and rng.random() < 0.5
        suffix = "_flip" if flipped else ""
        # In the stored dtype (float16 as extracted): the step converts on the device.
        out = {"mean": np.asarray(element["mean" + suffix]), "std": np.asarray(element["std" + suffix]),
               "label": np.int32(label)}
        if "image" in element:  # REPA: the encoders see the flip the latents come from
            image = np.asarray(element["image"], np.uint8)
            out["image"] = np.ascontiguousarray(image[:, ::-1]) if flipped else image
        return out


def _field(data: Mapping | Any, name: str, default: Any = dataclasses.MISSING) -> Any:
    """data.name for a ConfigDict or a dict; `default` when the field is optional and absent."""
    if name in data:
        return data[name]
    if default is dataclasses.MISSING:
        raise KeyError(f"data config has no field {name!r}")
    return default


def _ensure_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside absl.app.run nobody has parsed them yet."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_loader(data, global_batch_size: int, seed: int, start_step: int = 0, *,
                      shard_options: grain.sharding.ShardOptions | None = None,
                      source=None) -> grain.IterDataset:
    """This host's endless training batches of global steps start_step, start_step + 1, ...: batches
    {'image': uint8 (B_local, S, S, C), 'label': int32 (B_local,)} (a latent dataset: {'mean', 'std'}
    in their stored dtype, and 'label'), B_local = global_batch_size / number of hosts.

    Global batch s is a function of (source, seed, s) only: it holds positions [s B, (s + 1) B) of
    the record stream (every epoch reshuffled from the seed), and host p of P takes rows
    [p B / P, (p + 1) B / P). So a run resumes at a step on any number of hosts or workers and sees
    the batches the uninterrupted run saw, with no iterator state to save.

    `data` (ConfigDict or dict): name, data_dir ('' = default), split, image_size, channels, num_classes,
    random_flip, worker_count, worker_buffer_size; optional read_threads, read_buffer_size (Grain's
    ReadOptions). `shard_options` defaults to one shard per JAX process; `source` replaces the TFDS source
    (tests).
    """
    shard_options = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    hosts = shard_options.shard_count
    if global_batch_size % hosts:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the {hosts} "
                         "data shards (JAX processes)")
    local_batch_size = global_batch_size // hosts
    if source is None:
        source = open_source(_field(data, "name"), _field(data, "data_dir", ""), _field(data, "split", "train"))
    if not len(source):
        raise ValueError(f"data source {source!r} is empty")
    num_classes = int(_field(data, "num_classes"))
    # Grain wants a 32-bit seed; the shuffles and the per-record generators both derive from it. A
    # record's generator depends on its position in the stream, not on the host that reads it.
    seed = int(seed) % 2**32
    records = grain.MapDataset.source(KeyedSource(source)).shuffle(seed=seed).repeat(None)
    if "mean" in source[0]:  # a latent dataset (dit_jax.data.latents): pick the image or its flip
        batches = (records.random_map(PickLatent(num_classes, bool(_field(data, "random_flip"))), seed=seed)
                   .batch(local_batch_size, drop_remainder=True))
    else:
        records = records.map(DecodeCrop(int(_field(data, "image_size")), int(_field(data, "channels")),
                                          num_classes))
        if _field(data, "random_flip"):
            records = records.random_map(RandomFlip(), seed=seed)
        # uint8 all the way to the devices; the step maps it to [-1, 1] (preprocess.to_float_on_device).
        batches = records.batch(local_batch_size, drop_remainder=True)
    # Local batch k holds stream positions [k B_local, (k + 1) B_local): host p's part of global batch s is k = s P + p.
    mine = batches[start_step * hosts + shard_options.shard_index::hosts]
    # Grain's default of 16 reader threads suits remote files; on a 2-core laptop they fight over the GIL
    # (digits: 3x slower than 2 threads), so the default is capped at the CPU count.
    read_options = grain.ReadOptions(
        num_threads=int(_field(data, "read_threads", min(16, os.cpu_count() or 1))),
        prefetch_buffer_size=int(_field(data, "read_buffer_size", grain.ReadOptions().prefetch_buffer_size)))
    loader = mine.to_iter_dataset(read_options)
    worker_count = int(_field(data, "worker_count", 0))
    if worker_count:
        _ensure_flags_parsed()
        loader = loader.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=int(_field(data, "worker_buffer_size", 1))))
    return loader


def close(iterator) -> None:
    """Stops a loader iterator's worker processes and reader threads now (left to the garbage
    collector at interpreter exit, their teardown prints tracebacks)."""
    if hasattr(iterator, "close"):
        iterator.close()


def to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """This host's batch -> global jax.Arrays whose leading dim is local batch x process count."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


class DevicePrefetch:
    """Global batches from a host iterator, each sent to the devices `size` steps before it is used.

    The copies are asynchronous: a batch travels while the steps before it run, so the step does not
    wait for its input (size 0 sends each batch when it is asked for). Batches sent ahead and not
    used are dropped on close; the data position is the step, so nothing needs them.
    """

    def __init__(self, batches, sharding: jax.sharding.Sharding, size: int = 2):
        self._batches, self._sharding, self._size = batches, sharding, size
        self._ahead: collections.deque = collections.deque()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        while len(self._ahead) <= self._size:
            self._ahead.append(to_global(next(self._batches), self._sharding))
        return self._ahead.popleft()

    def close(self) -> None:
        self._ahead.clear()
        close(self._batches)
