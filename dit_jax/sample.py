"""Class-conditional sampling with a DiT: the jitted sampler over a batch, and image grids."""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.gaussian import GaussianDiffusion
from dit_jax.diffusion.samplers import guidance_channels, guided_model_fn, sample_loop
from dit_jax.models.dit import DiT, DiTConfig


def make_sampler(config: DiTConfig, diffusion: GaussianDiffusion, cfg_scale: float = 1.0,
                 cfg_mode: str = "reference", sampler: str = "ddpm", eta: float = 0.0):
    """A jitted `fn(params, labels, key) -> samples (B, H, W, C)` in the model's data space.

    Guidance is applied only when cfg_scale > 1, as the reference's sample_ddp.py. `key` is one key
    (split into the key of x_T and the key of the per-step noise), or one key per sample (shape
    (B, 2) raw keys): then sample b's x_T and step noise come from its own key only, so a sample is
    the same whatever batch or device count computes it.
    """
    model = DiT(config)
    channels = guidance_channels(cfg_mode, config.in_channels)

    @jax.jit
    def run(params, labels, key):
        def class_model_fn(x, t, y):
            return model.apply({"params": params}, x, t, y)

        if cfg_scale > 1.0:
            model_fn = guided_model_fn(class_model_fn, labels, config.null_class, cfg_scale, channels)
        else:
            model_fn = lambda x, t: class_model_fn(x, t, labels)  # noqa: E731
        shape = (labels.shape[0], config.input_size, config.input_size, config.in_channels)
        if key.ndim == 2:  # per-sample raw keys
            pairs = jax.vmap(jax.random.split)(key)  # (B, 2, 2): x_T key, step-noise key
            x_T = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(pairs[:, 0])

            def noise_fn(_, i, x):
                return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(
                    pairs[:, 1])
            x = sample_loop(diffusion, model_fn, x_T, key, sampler=sampler, eta=eta, noise_fn=noise_fn,
                            clip_denoised=False)
        else:
            init_key, step_key = jax.random.split(key)
            x_T = jax.random.normal(init_key, shape, jnp.float32)
            x = sample_loop(diffusion, model_fn, x_T, step_key, sampler=sampler, eta=eta, clip_denoised=False)
        return x[..., : config.in_channels]

    return run


def sample_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    """Raw per-sample keys fold_in(PRNGKey(seed), i): sample i depends only on (seed, i)."""
    base = jax.random.PRNGKey(seed)
    return np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32)))


def sample_labels(seed: int, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Uniform random labels in [0, num_classes), label i from (seed, i) only."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), 2**31 - 1)
    return np.asarray(jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(base, i), (), 0, num_classes))(
        jnp.asarray(indices, jnp.uint32)))


def sample_npz(run, params, num_samples: int, num_classes: int, seed: int, out_path: str,
               batch_per_device: int = 32, decode=None, log=print) -> str:
    """Sample `num_samples` images into the ADM .npz (`arr_0` uint8 NHWC, exactly N; `labels`).

    The work is split into shards of one global batch (batch_per_device x all devices of all
    hosts), each written as it finishes under OUT.shards/, so an interrupted run resumes without
    redoing them. `run(params, labels, keys)` is a `make_sampler` function; `decode` maps its
    output to images in [-1, 1] (the VAE for latent models).
    """
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    by_batch, whole = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    params = jax.device_put(params, whole)
    batch = batch_per_device * jax.device_count()
    shard_dir = out_path + ".shards"
    os.makedirs(shard_dir, exist_ok=True)
    num_shards = -(-num_samples // batch)
    path = lambda s: os.path.join(shard_dir, f"shard_{s:06d}.npz")  # noqa: E731
    todo = [s for s in range(num_shards) if not os.path.exists(path(s))]
    log(f"sampling {num_samples} images in {num_shards} shards of {batch} on {jax.device_count()} devices; "
        f"{num_shards - len(todo)} shards already done")
    t0 = time.time()
    for count, s in enumerate(todo, 1):
        idx = np.arange(s * batch, (s + 1) * batch)
        labels = sample_labels(seed, idx, num_classes)
        put = lambda a: jax.make_array_from_callback(a.shape, by_batch, lambda i: a[i])  # noqa: E731
        out = run(params, put(labels.astype(np.int32)), put(sample_keys(seed, idx)))
        if decode is not None:
            out = decode(out)
        images = to_uint8(multihost_utils.process_allgather(out, tiled=True))
        if jax.process_index() == 0:
            np.savez(path(s) + ".tmp.npz", images=images, labels=labels)
            os.replace(path(s) + ".tmp.npz", path(s))  # atomic: a shard is complete or absent
        rate = count * batch / (time.time() - t0)
        log(f"shard {count}/{len(todo)}: {rate:.2f} img/s, ETA {(len(todo) - count) * batch / rate:.0f} s")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dit_jax sample_npz shards")
    if jax.process_index() == 0:
        parts = [np.load(path(s)) for s in range(num_shards)]
        images = np.concatenate([p["images"] for p in parts])[:num_samples]
        labels = np.concatenate([p["labels"] for p in parts])[:num_samples]
        np.savez(out_path + ".tmp.npz", arr_0=images, labels=labels)
        os.replace(out_path + ".tmp.npz", out_path)
        log(f"wrote {out_path}: arr_0 {images.shape} uint8, labels {labels.shape}")
    return out_path


def to_uint8(x) -> np.ndarray:
    """[-1, 1] images -> uint8 as the reference: clip(127.5 x + 128, 0, 255), truncated."""
    return np.clip(127.5 * np.asarray(x, np.float32) + 128.0, 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows * (H + pad) + pad, ...) uint8 grid image."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: str, nrow: int | None = None, upscale: int = 1) -> None:
    """Write the grid as a PNG file, local or in a bucket."""
    import io

    from PIL import Image

    from dit_jax import storage
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    png = io.BytesIO()
    img.save(png, format="PNG")
    storage.write_bytes_atomic(path, png.getvalue())
