"""Normalisations with learned parameters, as LightningDiT uses them (the DiT's own LayerNorm has none:
`dit_jax.models.layers.layer_norm`).

- `RMSNorm`: LLaMA's x / sqrt(mean(x^2) + eps) * weight, eps 1e-6, weight initialised to ones; the
  statistics in float32 (the reference normalises `x.float()` and casts back before the weight).
- `AffineLayerNorm`: torch.nn.LayerNorm(dim) with its defaults, eps 1e-5, weight ones and bias zeros,
  which LightningDiT's QK-norm uses over each head's channels when RMSNorm is off.

Each parameter takes the logical axis name it is given, so the sharding rules place it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)).astype(x.dtype)


class RMSNorm(nn.Module):
    axis_name: str
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        return rms_normalize(x, self.eps).astype(self.dtype) * scale.astype(self.dtype)


class AffineLayerNorm(nn.Module):
    axis_name: str
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        names = (self.axis_name,)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), names),
                           (x.shape[-1],), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), names),
                          (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return y * scale.astype(self.dtype) + bias.astype(self.dtype)


def make_norm(rms: bool, axis_name: str, *, layer_norm_eps: float = 1e-5, name: str, **kw) -> nn.Module:
    """RMSNorm (eps 1e-6) when `rms`, else the affine LayerNorm with `layer_norm_eps`."""
    if rms:
        return RMSNorm(axis_name, name=name, **kw)
    return AffineLayerNorm(axis_name, eps=layer_norm_eps, name=name, **kw)
