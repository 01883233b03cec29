"""`dit-jax extract-latents`: a TFDS image dataset -> a latent dataset (dit_jax.data.latents) of the VAE
posterior of every image and of its horizontal flip.

Extraction is split into shards of `shard_size` records, each written atomically as it finishes,
so an interrupted run resumes without redoing finished shards; hosts take every process_count-th
shard. When all shards exist the TFDS dataset is assembled from them. The output may be a bucket
(gs://...): shards go there directly, so hosts without a shared filesystem see each other's work;
the dataset is assembled in a local temporary directory and uploaded.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from dit_jax import storage
from dit_jax.exit_codes import BadInput
from dit_jax.data.digits import default_data_dir
from dit_jax.data.latents import LATENT_KEYS, VERSION, dataset_builder
from dit_jax.data.pipeline import DecodeCrop, open_source
from dit_jax.data.preprocess import to_float_on_device
from dit_jax.weights import load_vae_weights

SHARDS = "extract_shards"


def _encoder(vae_params, vae_config):
    """uint8 images (B, H, W, 3) -> posterior (mean, std) of the images and of their flips, jitted
    with the batch split over this host's devices (B must divide by their number)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from dit_jax.models.vae import AutoencoderKL
    model = AutoencoderKL(vae_config)
    mesh = Mesh(np.asarray(jax.local_devices()), ("batch",))
    by_batch = NamedSharding(mesh, P("batch"))
    params = jax.device_put(vae_params, NamedSharding(mesh, P()))

    @jax.jit
    def encode_sharded(params, images):
        x = to_float_on_device(images)  # the training step's pixels, bit for bit
        both = jnp.concatenate([x, x[:, :, ::-1]])  # flip = reverse the width axis
        mean, logvar = model.apply({"params": params}, both, method="encode")
        std = jnp.exp(0.5 * logvar)
        n = images.shape[0]
        return mean[:n], std[:n], mean[n:], std[n:]

    return lambda images: encode_sharded(params, jax.device_put(images, by_batch))


def _shard_path(out_dir: str, k: int) -> str:
    return storage.join(out_dir, SHARDS, f"shard_{k:06d}.npz")


def extract_latents(name: str, data_dir: str, image_size: int, vae_dir: str, out_name: str,
                    out_data_dir: str = "", split: str = "train", batch_size: int = 64, dtype: str = "float16",
                    shard_size: int = 1024, log=print, with_images: bool = False) -> str:
    """Encode a TFDS image dataset into the latent dataset `out_name`; returns its data_dir. with_images: each
    record also holds its ADM-cropped uint8 image (not flipped: training flips it with the latents it picks),
    which REPA's frozen encoders read."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    storage.require_local(data_dir, "--data-dir")
    out_data_dir = str(storage.resolve(out_data_dir or data_dir or default_data_dir()))
    target = storage.join(out_data_dir, out_name, VERSION)
    if _built_already(target, out_name, log):
        return out_data_dir
    source = open_source(name, data_dir, split)
    vae_params, vae_config = load_vae_weights(vae_dir)
    encode = _encoder(vae_params, vae_config)
    batch_size = -(-batch_size // jax.local_device_count()) * jax.local_device_count()  # split evenly
    decode = DecodeCrop(image_size, 3, np.iinfo(np.int32).max)
    work = storage.join(out_data_dir, out_name)
    storage.makedirs(storage.join(work, SHARDS))
    n = len(source)
    num_shards = -(-n // shard_size)
    mine = [k for k in range(num_shards) if k % jax.process_count() == jax.process_index()]
    todo = [k for k in mine if not storage.exists(_shard_path(work, k))]
    log(f"extracting {n} images of {name!r} ({image_size} px) with the VAE in {vae_dir}: {len(mine)} shards here, "
        f"{len(mine) - len(todo)} already done")
    t0, done_images = time.time(), 0
    for count, k in enumerate(todo, 1):
        lo, hi = k * shard_size, min((k + 1) * shard_size, n)
        records = [decode.map({**source[i], "_key": i}) for i in range(lo, hi)]
        shard = _encoded_shard(records, encode, batch_size, dtype, with_images)
        storage.write_bytes_atomic(_shard_path(work, k), shard)  # a shard is complete or absent
        done_images += hi - lo
        rate = done_images / (time.time() - t0)
        log(f"shard {count}/{len(todo)}: {rate:.1f} img/s, ETA {(len(todo) - count) * shard_size / rate:.0f} s")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("dit_jax extract-latents shards")
    if jax.process_index() != 0:
        return out_data_dir
    latent_shape, image_shape = _assemble(out_name, out_data_dir, [_shard_path(work, k) for k in range(num_shards)],
                                          dtype, with_images)
    storage.rmtree(storage.join(work, SHARDS))
    remote = storage.is_uri(out_data_dir)
    per_image = 4 * int(np.prod(latent_shape)) * np.dtype(dtype).itemsize + int(np.prod(image_shape or 0))
    log(f"built latent dataset {out_name!r} at {target}: {n} images, {per_image / 1024:.1f} KiB of latents"
        f"{' and image' if image_shape else ''} per image")
    if remote:
        log("training reads ArrayRecord from local paths only: copy it to every host (gsutil -m cp -r "
            f"{storage.join(out_data_dir, out_name)} /data/) or mount the bucket with gcsfuse")
    return out_data_dir


def _built_already(target: str, out_name: str, log) -> bool:
    """Whether the latent dataset is built at `target` already; an error for anything else there."""
    info = storage.join(target, "dataset_info.json")
    if storage.exists(info):
        features = storage.join(target, "features.json")
        if not storage.exists(features) or '"mean"' not in storage.read_bytes(features).decode(errors="replace"):
            # e.g. --out-name naming the image dataset itself: "already built" would be a false success.
            raise FileExistsError(f"{target} holds a dataset that is not a latent dataset (no 'mean' feature): "
                                  "choose another --out-name (or --out-data-dir)")
        log(f"latent dataset {out_name!r} already built at {target}")
        return True
    if storage.exists(target):
        raise FileExistsError(f"{target} exists but holds no finished dataset (no dataset_info.json): move it away "
                              "or choose another --out-name; it is never deleted here")
    return False


def _encoded_shard(records: list[dict], encode, batch_size: int, dtype: str, with_images: bool = False) -> bytes:
    """The .npz bytes of one shard: labels and the posterior of every image and of its flip (and the
    cropped uint8 images themselves, with_images)."""
    images = np.stack([r["image"] for r in records])
    outs = {key: [] for key in LATENT_KEYS}
    for b in range(0, len(images), batch_size):
        chunk = images[b:b + batch_size]
        pad = batch_size - len(chunk)  # one compiled shape for every batch
        res = encode(np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)]) if pad else chunk)
        for key, value in zip(LATENT_KEYS, res):
            outs[key].append(np.asarray(value)[: len(chunk)].astype(dtype))
    shard = io.BytesIO()
    extra = {"image": images} if with_images else {}
    np.savez(shard, label=np.array([r["label"] for r in records], np.int64),
             **{key: np.concatenate(v) for key, v in outs.items()}, **extra)
    return shard.getvalue()


def _assemble(out_name: str, out_data_dir: str, files: list[str], dtype: str, with_images: bool = False) -> tuple:
    """The TFDS dataset built from every shard at OUT_DATA_DIR/out_name/VERSION; the latents' shape and
    the images' (None without images)."""
    missing = [f for f in files if not storage.exists(f)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) missing (first {missing[0]}): rerun to finish them")
    with np.load(io.BytesIO(storage.read_bytes(files[0]))) as z:
        latent_shape = z["mean"].shape[1:]
        image_shape = z["image"].shape[1:] if "image" in z.files else None
    if (image_shape is not None) != with_images:  # shards of an earlier run with the other choice
        shards = os.path.dirname(files[0])
        raise BadInput(f"{shards} holds shards {'with' if image_shape else 'without'} images: rerun with"
                       f"{'' if image_shape else 'out'} --with-images, or delete that directory")
    # ArrayRecord writes local files only: a bucket's dataset is built in local temp space.
    remote = storage.is_uri(out_data_dir)
    target = storage.join(out_data_dir, out_name, VERSION)
    tmp = tempfile.mkdtemp(prefix=f".{out_name}-build-", dir=None if remote else out_data_dir)
    try:
        builder = dataset_builder(out_name, files, latent_shape, dtype, image_shape)(
            data_dir=tmp, file_format=tfds.core.FileFormat.ARRAY_RECORD)
        builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
        built = os.path.join(tmp, out_name, VERSION)
        if remote:
            storage.upload_tree(built, target)
        else:
            os.rename(built, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return latent_shape, image_shape
