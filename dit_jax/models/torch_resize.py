"""PyTorch's bicubic `F.interpolate` (align_corners=False) as explicit interpolation matrices.

DINOv2 resizes its position table with it (`interpolate_pos_encoding`), REPA resamples that table once
at load time with it (timm's `resample_abs_pos_embed`), and EDM2's FD_DINOv2 resizes images to 224 with
it. `jax.image.resize` is not the same operator (its cubic uses a = -0.5 and a different border rule),
so each 1-D resize is written here as an (out, in) matrix computed in float64 numpy, exactly as
PyTorch's CPU kernels (aten/src/ATen/native/UpSample.h, cpu/UpSampleKernel.cpp) define the weights:

* plain bicubic (antialias=False): source coordinate `scale * (i + 0.5) - 0.5`, Keys' cubic with
  a = -0.75 on the four neighbours `floor(src) - 1 .. floor(src) + 2`, indices clamped to the border
  (the border pixel is repeated, its weights add up);
* antialiased bicubic (antialias=True): centre `scale * (i + 0.5)`, Keys' cubic with a = -0.5 stretched
  by `scale` when downsampling (support 2 * scale), taps cut at the borders and the weights of each
  output renormalised to sum 1 (PIL's scheme).

`scale` is `in / out`, or `1 / scale_factor` when the caller passes a scale factor (PyTorch then keeps
the factor for the weights and only floors it for the output size: DINOv2's `+ 0.1` offset lives there).
A 2-D resize is separable: `out = Mh @ x @ Mw^T`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel W(x) with parameter a (PyTorch: cubic_convolution1/2), in the
    dtype of x."""
    x = np.abs(x)
    a = x.dtype.type(a)
    one, two = x.dtype.type(1), x.dtype.type(2)
    near = ((a + 2) * x - (a + 3)) * x * x + one
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < one, near, np.where(x < two, far, x.dtype.type(0)))


def output_size(n_in: int, n_out: int | None, scale_factor: float | None) -> int:
    """The output length PyTorch gives for a size or a scale factor (floor(n_in * factor))."""
    if (n_out is None) == (scale_factor is None):
        raise ValueError("give exactly one of n_out and scale_factor")
    return int(n_out) if n_out is not None else int(math.floor(float(n_in) * scale_factor))


def _scale(n_in: int, n_out: int, scale_factor: float | None) -> np.float32:
    """area_pixel_compute_scale with align_corners=False, in float32 as PyTorch computes it for float32
    tensors (1 / factor in double, then rounded; or in / out in float)."""
    if scale_factor is not None and scale_factor > 0:
        return np.float32(1.0 / scale_factor)
    return np.float32(n_in) / np.float32(n_out)


# The weights are computed with PyTorch's own float32 / double mix: at 512 -> 224 the float32 source
# coordinates alone move weights by ~5e-5, which a float64 statement would not reproduce.
def _plain_matrix(n_in: int, n_out: int, scale: np.float32) -> np.ndarray:
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    f32 = np.float32
    src = (np.float64(scale) * (rows + 0.5) - 0.5).astype(f32)  # one rounding: the compiled kernel fuses (FMA)
    # guard_index_and_lambda: the index at most n_in - 1, the fraction inside [0, 1]
    idx = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    t = np.clip(src - idx.astype(f32), f32(0), f32(1))
    dists = (t + f32(1), t, f32(1) - t, f32(2) - t)             # taps idx-1 .. idx+2
    for k, d in enumerate(dists):
        np.add.at(m, (rows, np.clip(idx - 1 + k, 0, n_in - 1)), _keys_cubic(d, -0.75).astype(np.float64))
    return m


def _antialias_matrix(n_in: int, n_out: int, scale: np.float32) -> np.ndarray:
    m = np.zeros((n_out, n_in), np.float64)
    f32 = np.float32
    support = f32(2.0 * float(scale)) if scale >= 1.0 else f32(2.0)
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    for i in range(n_out):
        center = f32(float(scale) * (i + 0.5))                  # double product, stored as float
        # int() truncates toward zero, as the C++ static_cast does
        lo = max(int(float(center) - float(support) + 0.5), 0)
        hi = min(int(float(center) + float(support) + 0.5), n_in)
        j = np.arange(lo, hi)
        x = (((j.astype(f32) - center).astype(np.float64) + 0.5) * float(invscale)).astype(f32)
        w = _keys_cubic(x, -0.5)
        total = f32(0)
        for v in w:                                             # float accumulation, in order
            total = f32(total + v)
        m[i, lo:hi] = (w / total if total != 0.0 else w).astype(np.float64)
    return m


def bicubic_matrix(n_in: int, n_out: int | None = None, *, scale_factor: float | None = None,
                   antialias: bool = False) -> np.ndarray:
    """The (out, in) float64 matrix of PyTorch's 1-D bicubic resize, align_corners=False.

    Give the output length `n_out` or a `scale_factor` (output length floor(n_in * factor); the weights
    use 1 / factor, as PyTorch does when `F.interpolate` gets `scale_factor`)."""
    n_out = output_size(n_in, n_out, scale_factor)
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bicubic resize needs positive lengths, got {n_in} -> {n_out}")
    scale = _scale(n_in, n_out, scale_factor)
    return _antialias_matrix(n_in, n_out, scale) if antialias else _plain_matrix(n_in, n_out, scale)


def resize_hw(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
    """Resize channels-last `x` (..., H, W, C) with the row matrix `mh` (out_h, H) and the column matrix
    `mw` (out_w, W), in float32 at full matmul precision (no TF32/bf16 passes on accelerators)."""
    hi = jax.lax.Precision.HIGHEST
    x = jnp.asarray(x, jnp.float32)
    x = jnp.einsum("...hwc,ow->...hoc", x, jnp.asarray(mw, jnp.float32), precision=hi)
    return jnp.einsum("...hwc,oh->...owc", x, jnp.asarray(mh, jnp.float32), precision=hi)
