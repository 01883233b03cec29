"""Class-conditional sampling with a DiT: the jitted sampler over a batch, and image grids."""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.gaussian import GaussianDiffusion
from dit_jax.diffusion.samplers import guidance_channels, guided_model_fn, sample_loop
from dit_jax.models.dit import DiT, DiTConfig


def make_sampler(config: DiTConfig, diffusion: GaussianDiffusion, cfg_scale: float = 1.0,
                 cfg_mode: str = "reference", sampler: str = "ddpm", eta: float = 0.0):
    """A jitted `fn(params, labels, key) -> samples (B, H, W, C)` in the model's data space.

    Guidance is applied only when cfg_scale > 1, as the reference's sample_ddp.py. `key` is split
    into the key of x_T and the key of the per-step noise.
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
        init_key, step_key = jax.random.split(key)
        shape = (labels.shape[0], config.input_size, config.input_size, config.in_channels)
        x_T = jax.random.normal(init_key, shape, jnp.float32)
        x = sample_loop(diffusion, model_fn, x_T, step_key, sampler=sampler, eta=eta)
        return x[..., : config.in_channels]

    return run


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
    from PIL import Image
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    img.save(path)
