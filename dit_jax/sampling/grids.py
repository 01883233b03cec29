"""Image output: [-1, 1] samples as uint8, laid out in a grid and written as PNG; and the EMA sample
grid a training run writes."""

from __future__ import annotations

import io
import math

import jax
import numpy as np

from dit_jax import storage
from dit_jax.run import Run


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
    """Write the grid as an image file in the format its extension names (PNG for any other), local
    or in a bucket."""
    import os

    from PIL import Image

    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    Image.init()
    fmt = Image.registered_extensions().get(os.path.splitext(str(path))[1].lower(), "PNG")
    data = io.BytesIO()
    img.save(data, format=fmt)
    storage.write_bytes_atomic(path, data.getvalue())


def make_grid_sampler(run: Run):
    """The sample grids' jitted sampler over the run's mesh (config.sample), built once per run."""
    from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler
    return build_sampler(run, SamplerSettings.from_config(run.config.sample, run.config.transport), uint8=True,
                         finite_check=True)


def sample_grid(run: Run, ema_params, step: int, workdir: str, sampler, vae_params=None) -> str | None:
    """EMA samples as a PNG grid, sampled by all hosts and written by process 0; latent models are
    decoded with the VAE (skipped without one)."""
    from dit_jax.sampling.run_sampler import fetch
    if run.latent and vae_params is None:
        return None
    s, num_classes = run.config.sample, run.model.num_classes
    labels = np.arange(s.num) % num_classes
    from dit_jax.sampling.run_sampler import NonFiniteSamples
    try:
        images = fetch(sampler(ema_params, labels, jax.random.PRNGKey(run.config.seed + 1), vae_params), s.num)
    except NonFiniteSamples as e:  # reported, not drawn as a black grid; training goes on (its loss is watched)
        if jax.process_index() == 0:
            print(f"warning: no sample grid at step {step}: {e}", flush=True)
        return None
    if jax.process_index() != 0:
        return None
    path = storage.join(workdir, "samples", f"step_{step:07d}.png")
    save_grid(images, path, nrow=min(num_classes, s.num), upscale=max(1, 64 // images.shape[1]))
    return path
