"""REPA's network pieces (Yu et al., sihyun-yu/REPA): the projector MLP that maps the SiT's hidden tokens
after block `encoder_depth` into a frozen encoder's feature space, and the encoder input preprocessing of
REPA's train.py (`preprocess_raw_image`), both pure functions of their inputs.

The projector params sit beside the DiT's under the key PROJECTORS, so a REPA checkpoint samples with the
plain DiT (Flax's apply ignores the extra entry) and resumes with its projectors.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.models.layers import Linear

PROJECTORS = "repa_projectors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # timm's IMAGENET_DEFAULT_MEAN / _STD, as REPA normalises
IMAGENET_STD = (0.229, 0.224, 0.225)


class Projectors(nn.Module):
    """One MLP per encoder: Linear(hidden, dim) - SiLU - Linear(dim, dim) - SiLU - Linear(dim, z_dim), read
    on the tokens (B, N, hidden) with no norm in front (REPA's build_mlp). xavier_uniform weights, zero
    biases, as REPA's SiT initialises every nn.Linear."""

    projector_dim: int
    z_dims: tuple[int, ...]
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> list[jax.Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out = []
        for i, z_dim in enumerate(self.z_dims):
            h = nn.silu(Linear((self.projector_dim,), ("embed", "mlp"), name=f"projector_{i}_fc1", **kw)(tokens))
            h = nn.silu(Linear((self.projector_dim,), ("embed_in", "mlp"), name=f"projector_{i}_fc2", **kw)(h))
            # float32 out: the cosine in the projection loss is computed in float32 whatever the compute dtype
            out.append(Linear((z_dim,), ("mlp", "embed_in"), name=f"projector_{i}_fc3", **kw)(h).astype(jnp.float32))
        return out


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel with PyTorch's a = -0.75 (jax.image.resize's cubic uses -0.5)."""
    x, a = np.abs(x).astype(np.float32), np.float32(a)
    return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


@functools.lru_cache(maxsize=32)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of torch.nn.functional.interpolate(mode='bicubic', align_corners=False,
    antialias=False) along one axis: source x = (i + 0.5) n_in / n_out - 0.5 (not clamped at 0, as torch
    does for cubic), four taps at floor(x) - 1 .. floor(x) + 2 with indices clamped to the border."""
    # float32 throughout, as torch computes the coordinates and the weights of float inputs
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(src)
    frac = (src - base).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float64)
    for k in range(-1, 3):
        idx = np.clip(base + k, 0, n_in - 1).astype(np.int64)
        np.add.at(m, (np.arange(n_out), idx), _cubic(frac - k))
    return m.astype(np.float32)


def resize_bicubic(x: jax.Array, size: int) -> jax.Array:
    """NHWC float -> (B, size, size, C), torch's bicubic without antialias (see bicubic_matrix)."""
    if x.shape[1] == size and x.shape[2] == size:
        return x  # torch's interpolate to the same size is the identity (the weights at frac 0 are one-hot)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(bicubic_matrix(x.shape[1], size)), x, precision=hi)
    return jnp.einsum("ow,bhwc->bhoc", jnp.asarray(bicubic_matrix(x.shape[2], size)), x, precision=hi)


def preprocess_raw_image(images: jax.Array, resolution: int) -> jax.Array:
    """REPA's preprocess_raw_image for DINOv2 encoders, on NHWC uint8 (or float 0..255) images: x / 255,
    ImageNet mean/std, *then* bicubic resize to 224 * (resolution // 256), no antialias."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
    return resize_bicubic(x, 224 * (resolution // 256))
