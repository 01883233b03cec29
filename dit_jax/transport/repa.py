"""REPA's training objective (sihyun-yu/REPA loss.py SILoss and train.py), as pure functions.

REPA's own time convention, the opposite of SiT's: **t = 0 is data, t = 1 is noise**.
    linear:  x_t = (1 - t) x + t e,                     v = -x + e
    cosine:  x_t = cos(pi t / 2) x + sin(pi t / 2) e,   v = d_alpha x + d_sigma e
The network predicts v ("v" prediction, the only one REPA implements) from (x_t, t) with t in [0, 1]
unscaled. Times: "uniform" t ~ U[0, 1); "lognormal" sigma = exp(n), n ~ N(0, 1), then t = sigma / (1 + sigma)
(linear) or 2/pi atan(sigma) (cosine). The denoising term is the per-example mean squared error; the
projection term is the negative cosine between encoder features and projected tokens, averaged over tokens
and batch, summed over encoders and divided by their number; total = mean(denoise) + proj_coeff * proj.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

PATHS = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class RepaFlow:
    """A REPA run's objective as the samplers see it: REPA's interpolant (t = 0 data), v prediction."""
    path: str = "linear"

WEIGHTINGS = ("uniform", "lognormal")
PREDICTIONS = ("v",)


def interpolant(path: str, t: jax.Array):
    """(alpha_t, sigma_t, d alpha_t / dt, d sigma_t / dt) at t (any shape)."""
    if path == "linear":
        return 1 - t, t, -jnp.ones_like(t), jnp.ones_like(t)
    if path == "cosine":
        a = t * (math.pi / 2)
        return jnp.cos(a), jnp.sin(a), -math.pi / 2 * jnp.sin(a), math.pi / 2 * jnp.cos(a)
    raise ValueError(f"REPA path must be one of {PATHS}, got {path!r}")


def draw_time(key: jax.Array, batch: int, weighting: str, path: str) -> jax.Array:
    """(B,) training times as SILoss draws them."""
    if weighting == "uniform":
        return jax.random.uniform(key, (batch,), jnp.float32)
    if weighting == "lognormal":
        return lognormal_time(jax.random.normal(key, (batch,), jnp.float32), path)
    raise ValueError(f"REPA weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def lognormal_time(n: jax.Array, path: str) -> jax.Array:
    """t of standard normal draws n: sigma = exp(n) (EDM-style), t = sigma / (1 + sigma) for the linear path,
    2/pi atan(sigma) for the cosine path (both make sigma_t / alpha_t = sigma)."""
    sigma = jnp.exp(n)
    return sigma / (1 + sigma) if path == "linear" else 2 / math.pi * jnp.arctan(sigma)


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def noisy_input_and_target(path: str, x0: jax.Array, noise: jax.Array, t: jax.Array):
    """(x_t, v target) for data x0 (t = 0) and noise (t = 1)."""
    alpha, sigma, d_alpha, d_sigma = (_bcast(v, x0) for v in interpolant(path, t))
    return alpha * x0 + sigma * noise, d_alpha * x0 + d_sigma * noise


def denoising_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """(B,) mean squared error over every non-batch axis (mean_flat)."""
    return jnp.mean(jnp.square(prediction - target), axis=tuple(range(1, prediction.ndim)))


def _normalize(z: jax.Array) -> jax.Array:
    """torch.nn.functional.normalize: z / max(||z||, 1e-12) along the last axis."""
    norm = jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True))
    return z / jnp.maximum(norm, 1e-12)


def projection_loss(zs, zs_tilde) -> jax.Array:
    """Scalar: for each encoder, -cos(z, z~) per token, mean over tokens, summed over the batch; the sum
    over encoders divided by (encoders x batch). z: (B, N, D) encoder features; z~: (B, N, D) projected
    tokens. An encoder with one feature vector per image (N = 1) is aligned with every token."""
    total = 0.0
    for z, z_tilde in zip(zs, zs_tilde, strict=True):
        cos = jnp.sum(_normalize(z.astype(jnp.float32)) * _normalize(z_tilde.astype(jnp.float32)), axis=-1)
        total = total + jnp.sum(jnp.mean(-cos, axis=-1))
    return total / (len(zs) * zs[0].shape[0])
