"""The host sends what it reads (uint8 pixels, float16 latents), the device converts, and batches
are sent to the devices ahead of the step that needs them."""

import dataclasses
from functools import partial

import jax
import numpy as np
import pytest

from dit_jax.benchmark.suite import LATENT_DATASET, synthetic_latent_dataset
from dit_jax.data import pipeline, preprocess
from dit_jax.models.dit import DiTConfig
from dit_jax.parallel.mesh import make_mesh
from dit_jax.parallel.sharding import batch_sharding
from dit_jax.train.step import model_input

TINY = DiTConfig(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=10)


def test_pixels_convert_on_the_device_bit_for_bit():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    on_device = np.asarray(jax.jit(preprocess.to_float_on_device)(pixels))
    assert on_device.dtype == np.float32
    np.testing.assert_array_equal(on_device, preprocess.to_float(pixels))
    # Against expressions that share no code with to_float, for all 256 values: the reference's
    # torchvision ToTensor (x / 255) then Normalize(0.5, 0.5), in float32, bit for bit; and the
    # exact value x / 127.5 - 1 in float64, within half a float32 ulp of [1, 2) (2**-24: the rounding
    # of x / 127.5 before 1 is subtracted; measured 5.94e-8 at most).
    values = np.arange(256)
    torchvision = (values.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(on_device.ravel(), torchvision)
    error = np.abs(on_device.ravel().astype(np.float64) - (values / 127.5 - 1.0))
    assert error.max() <= 2.0**-24, error.max()
    assert on_device.ravel()[0] == -1.0 and on_device.ravel()[255] == 1.0


def x0(batch, mode):
    """The step's diffusion input, computed on the device as train_step computes it."""
    return np.asarray(jax.jit(partial(model_input, mode=mode))(batch, jax.random.key(0)))


def test_the_step_input_from_uint8_pixels_equals_host_floats():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    from_uint8 = x0({"image": pixels}, "")
    assert from_uint8.dtype == np.float32
    np.testing.assert_array_equal(from_uint8, x0({"image": preprocess.to_float(pixels)}, ""))


@pytest.mark.usefixtures("users_compiler")  # bit for bit as users' programs are compiled
def test_the_step_input_from_float16_latents_equals_their_float32_values():
    rng = np.random.default_rng(1)
    half = {"mean": rng.standard_normal((4, 8, 8, 4)).astype(np.float16), "std": np.full((4, 8, 8, 4), 0.1, np.float16)}
    from_half = x0(half, "dataset")
    assert from_half.dtype == np.float32
    np.testing.assert_array_equal(from_half, x0({k: v.astype(np.float32) for k, v in half.items()}, "dataset"))


def test_a_float16_latent_dataset_reaches_the_device_as_float16(tmp_path):
    cfg = dataclasses.replace(TINY, in_channels=4)
    data_dir = synthetic_latent_dataset(cfg, str(tmp_path), 12)
    data = dict(name=LATENT_DATASET, data_dir=data_dir, split="train", num_classes=10, random_flip=True,
                worker_count=0, worker_buffer_size=1)
    it = iter(pipeline.make_train_loader(data, 4, seed=0))
    try:
        batch = next(it)
    finally:
        pipeline.close(it)
    assert batch["mean"].dtype == batch["std"].dtype == np.float16
    assert batch["mean"].shape == (4, 8, 8, 4) and batch["label"].dtype == np.int32


class CountingBatches:
    """Host batch i is all i; counts how many batches were asked for, and whether it was closed."""

    def __init__(self):
        self.asked, self.closed = 0, False

    def __next__(self):
        self.asked += 1
        return {"x": np.full((2, 3), self.asked - 1, np.float32)}

    def close(self):
        self.closed = True


@pytest.mark.parametrize("size", [0, 2])
def test_device_prefetch_sends_batches_ahead_in_order(size):
    mesh = make_mesh(devices=jax.devices()[:1])
    host = CountingBatches()
    batches = pipeline.DevicePrefetch(host, batch_sharding(mesh), size)
    for i in range(4):
        batch = next(batches)
        assert isinstance(batch["x"], jax.Array) and batch["x"].sharding == batch_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(batch["x"]), np.full((2, 3), i))
        assert host.asked == i + 1 + size  # `size` batches already on their way
    batches.close()
    assert host.closed
