"""2D rotary position embedding of LightningDiT (EVA-02's `VisionRotaryEmbeddingFast`), channels-last.

Each head's channels are split in two halves: the first half rotates with the token's row index, the
second with its column index. Within a half, channels come in adjacent pairs (2i, 2i + 1) rotated by
one angle (the GPT-J layout, not the GPT-NeoX "rotate the two halves" one):

    out = x * cos + rotate_pairs(x) * sin,   rotate_pairs(x)[2i], [2i + 1] = -x[2i + 1], x[2i]

The angle of pair i in a half of width m = head_dim / 2 is pos * theta^(-2i / m), pos the row (or
column) index. The reference computes its tables in float32 (positions arange(L) / L * L, frequencies
1 / theta^(arange(0, m, 2) / m)); so do we, before the cos/sin, so the tables agree to rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rope_tables(head_dim: int, grid: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (grid * grid, head_dim) float32, tokens in row-major order."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    half = head_dim // 2
    exponents = np.arange(0, half, 2)[: half // 2].astype(np.float32) / np.float32(half)
    freqs = np.float32(1.0) / (np.float32(theta) ** exponents)
    pos = (np.arange(grid).astype(np.float32) / np.float32(grid)) * np.float32(grid)
    angles = np.repeat(pos[:, None] * freqs[None, :], 2, axis=-1)          # (grid, half), pairs repeated
    rows = np.broadcast_to(angles[:, None, :], (grid, grid, half))         # varies with the row index
    cols = np.broadcast_to(angles[None, :, :], (grid, grid, half))         # varies with the column index
    table = np.concatenate([rows, cols], axis=-1).reshape(grid * grid, head_dim).astype(np.float64)
    # cos/sin of the float32 angles, correctly rounded to float32.
    return np.cos(table).astype(np.float32), np.sin(table).astype(np.float32)


def rotate_pairs(x: jax.Array) -> jax.Array:
    """(..., 2i) -> -x[2i + 1], (..., 2i + 1) -> x[2i]: multiplication by i of each complex pair."""
    pairs = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    return jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


def apply_rope(x: jax.Array, cos: np.ndarray, sin: np.ndarray) -> jax.Array:
    """x: (B, T, N, H) queries or keys; cos/sin: (T, H). Computed in float32, returned in x's dtype
    (the reference multiplies by its float32 tables, which promotes a bf16 q to float32)."""
    x32 = x.astype(jnp.float32)
    c, s = jnp.asarray(cos)[None, :, None, :], jnp.asarray(sin)[None, :, None, :]
    return (x32 * c + rotate_pairs(x32) * s).astype(x.dtype)
