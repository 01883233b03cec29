"""Latent training: extraction to a latent dataset (resumable), and the two latent inputs (VAE
inside the step, or the extracted dataset) giving the same losses for the same images and keys."""

import os

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from dit_jax.convert.vae_torch import vae_config_from_diffusers, vae_from_diffusers  # noqa: E402
from dit_jax.data.image_folder import build_image_folder  # noqa: E402
from dit_jax.data.latents import LATENT_KEYS  # noqa: E402
from dit_jax.jobs.extract_latents import SHARDS, extract_latents  # noqa: E402
from dit_jax.weights import save_vae_weights  # noqa: E402

SMALL = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(root / "images" / f"class_{c}")
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(
                root / "images" / f"class_{c}" / f"{i}.png")
    data_dir = str(root / "tfds")
    build_image_folder(str(root / "images"), data_dir, "tiny_images", log=lambda s: None)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**SMALL).eval()
    cfg = vae_config_from_diffusers(dict(vae.config))
    params = vae_from_diffusers({k: v.numpy() for k, v in vae.state_dict().items()}, cfg)
    vae_dir = save_vae_weights(str(root / "vae"), params, cfg)
    return root, data_dir, vae, vae_dir


def test_extraction_stores_posterior_of_image_and_flip_and_resumes(setup):
    import tensorflow_datasets as tfds

    from dit_jax.data.pipeline import DecodeCrop, open_source
    root, data_dir, vae, vae_dir = setup
    out = str(root / "out")
    # A finished shard from an earlier, interrupted run is kept, not redone: mark it.
    os.makedirs(os.path.join(out, "tiny_latents", SHARDS))
    marker = {k: np.full((5, 8, 8, 4), 7.0, np.float32) for k in LATENT_KEYS}
    np.savez(os.path.join(out, "tiny_latents", SHARDS, "shard_000001.npz"), label=np.zeros(5, np.int64), **marker)
    extract_latents("tiny_images", data_dir, 16, vae_dir, "tiny_latents", out_data_dir=out, batch_size=4,
                    dtype="float32", shard_size=5, log=lambda s: None)
    latents = tfds.data_source("tiny_latents", split="train", data_dir=out)
    images = open_source("tiny_images", data_dir)
    assert len(latents) == len(images) == 12
    assert np.all(latents[5]["mean"] == 7.0) and np.all(latents[9]["std_flip"] == 7.0)  # the kept shard
    crop = DecodeCrop(16, 3, 3)
    for i in (0, 3, 11):
        img = crop.map({**images[i], "_key": i})["image"]
        x = torch.from_numpy(img.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        for flip, suffix in ((False, ""), (True, "_flip")):
            with torch.no_grad():
                post = vae.encode(torch.flip(x, dims=[3]) if flip else x).latent_dist
            rec = latents[i]
            np.testing.assert_allclose(rec["mean" + suffix], post.mean[0].permute(1, 2, 0).numpy(), rtol=1e-4,
                                       atol=1e-5)
            np.testing.assert_allclose(rec["std" + suffix], post.std[0].permute(1, 2, 0).numpy(), rtol=1e-4,
                                       atol=1e-5)
        assert rec["label"] == int(images[i]["label"])
    assert not os.path.exists(os.path.join(out, "tiny_latents", SHARDS))


def test_extraction_into_a_bucket_resumes_from_its_shards_and_uploads_the_dataset(setup, gcs_bucket, tmp_path):
    """Shards in gs:// (so hosts without a shared filesystem see each other's); the ArrayRecord dataset
    is built locally and uploaded, then brought back as a per-host copy would be."""
    import io

    import tensorflow_datasets as tfds

    from conftest import gcs_objects
    from dit_jax import storage
    from dit_jax.data.pipeline import DecodeCrop, open_source
    root, data_dir, vae, vae_dir = setup
    bucket, url = gcs_bucket
    out = f"gs://{bucket}/tfds"
    marker, buf = {k: np.full((5, 8, 8, 4), 7.0, np.float32) for k in LATENT_KEYS}, io.BytesIO()
    np.savez(buf, label=np.zeros(5, np.int64), **marker)
    storage.write_bytes_atomic(f"{out}/bucket_latents/{SHARDS}/shard_000001.npz", buf.getvalue())  # done earlier
    logs = []
    assert extract_latents("tiny_images", data_dir, 16, vae_dir, "bucket_latents", out_data_dir=out, batch_size=4,
                           dtype="float32", shard_size=5, log=logs.append) == out
    assert any("gsutil -m cp -r" in line for line in logs)
    names = gcs_objects(url, bucket, "tfds/bucket_latents/")
    assert not [n for n in names if SHARDS in n]  # shards removed once the dataset is built
    assert "tfds/bucket_latents/1.0.0/dataset_info.json" in names
    local = tmp_path / "copy"
    for name in names:  # what `gsutil -m cp -r` would bring to a host
        dest = local / name.removeprefix("tfds/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(storage.read_bytes(f"gs://{bucket}/{name}"))
    latents = tfds.data_source("bucket_latents", split="train", data_dir=str(local))
    assert len(latents) == 12 and np.all(latents[5]["mean"] == 7.0)  # the bucket's earlier shard was kept
    img = DecodeCrop(16, 3, 3).map({**open_source("tiny_images", data_dir)[0], "_key": 0})["image"]
    with torch.no_grad():
        post = vae.encode(torch.from_numpy(img.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]).latent_dist
    np.testing.assert_allclose(latents[0]["mean"], post.mean[0].permute(1, 2, 0).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_vae_in_step_and_latent_dataset_give_the_same_losses(setup, tmp_path, flip):
    from helpers import losses, tiny_config

    from dit_jax.train.loop import train_and_evaluate
    root, data_dir, _, vae_dir = setup
    out = str(root / "out_same")
    extract_latents("tiny_images", data_dir, 16, vae_dir, "same_latents", out_data_dir=out, batch_size=4,
                    dtype="float32", shard_size=6, log=lambda s: None)
    common = {"model.input_size": 8, "model.in_channels": 4, "model.num_classes": 3, "data.image_size": 16,
              "data.channels": 3, "data.num_classes": 3, "data.random_flip": flip, "batch_size": 4,
              "total_steps": 4, "checkpoint_every": 4, "data.vae": vae_dir}
    train_and_evaluate(tiny_config(**common, **{"data.latents": "encode", "data.name": "tiny_images",
                                                "data.data_dir": data_dir, "sample.every": 4, "sample.num": 3,
                                                "sample.steps": "5"}), str(tmp_path / "encode"))
    train_and_evaluate(tiny_config(**common, **{"data.latents": "dataset", "data.name": "same_latents",
                                                "data.data_dir": out}), str(tmp_path / "dataset"))
    a, b = losses(str(tmp_path / "encode")), losses(str(tmp_path / "dataset"))
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
    # The EMA sample grid of a latent model is decoded with the VAE: 16x16 RGB images.
    grid = Image.open(tmp_path / "encode" / "samples" / "step_0000004.png")
    assert grid.mode == "RGB" and grid.size == (4 * (3 * 18 + 2), 4 * 20)


def test_latent_config_errors(setup, tmp_path):
    from helpers import tiny_config

    from dit_jax.train.loop import train_and_evaluate
    root, data_dir, _, vae_dir = setup
    with pytest.raises(ValueError, match="needs the VAE: set --config.data.vae"):
        train_and_evaluate(tiny_config(**{"data.latents": "encode"}), str(tmp_path))
    with pytest.raises(ValueError, match="but the model takes 8x8x1"):
        train_and_evaluate(tiny_config(**{"data.latents": "encode", "data.vae": vae_dir, "data.image_size": 16,
                                          "data.name": "tiny_images", "data.data_dir": data_dir}), str(tmp_path))


def test_extraction_encodes_the_pixels_the_training_step_sees(setup):
    """The extraction's [-1, 1] images are those of the step (preprocess.to_float, bit for bit), so a
    latent dataset and the VAE inside the step start from the same numbers."""
    import jax

    from dit_jax.data.preprocess import to_float
    from dit_jax.jobs.extract_latents import _encoder
    from dit_jax.models.vae import AutoencoderKL
    from dit_jax.weights import load_vae_weights
    _, _, _, vae_dir = setup
    params, cfg = load_vae_weights(vae_dir)
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    mean = np.asarray(_encoder(params, cfg)(images)[0])
    x = to_float(images)
    want = jax.jit(lambda p, x: AutoencoderKL(cfg).apply({"params": p}, jax.numpy.concatenate([x, x[:, :, ::-1]]),
                                                          method="encode")[0][:1])(params, x)
    np.testing.assert_array_equal(mean, np.asarray(want))
