"""Stable Diffusion's KL-f8 autoencoder (diffusers' `AutoencoderKL`), NHWC, pure Flax Linen.

The DiT paper trains on the latents of `stabilityai/sd-vae-ft-ema` (or `-mse`): 256 px images
become 4 x 32 x 32 latents, scaled by 0.18215.

    config = VAEConfig()                                   # the SD architecture
    params = load_diffusers_vae("sd-vae-ft-ema/")          # dit_jax.convert.vae_torch
    z = encode_latents(params, images, key, config)        # images (B, H, W, 3) in [-1, 1]
    images = decode_latents(params, z, config)             # back to (B, H, W, 3), about [-1, 1]

or at the module level, `AutoencoderKL(config).apply({'params': params}, x, method='encode')`
for the posterior moments (mean, logvar) and `method='decode'` for z -> image (unscaled z).

The parameter tree mirrors diffusers' module names (`encoder/down_blocks_0/resnets_1/conv1`), so
`dit_jax.convert.vae_torch` is a table rather than a puzzle. Numerics follow diffusers in float32:
GroupNorm eps 1e-6, Downsample pads right/bottom only, Upsample is nearest x2, the mid-block
attention is single-head over all positions. With dtype='bfloat16', convolutions and matmuls run
in bfloat16 while GroupNorm statistics and the attention softmax stay in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.models.dit import DTYPES

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": nn.silu,
    "swish": nn.silu,
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),  # torch.nn.GELU() is the exact erf form
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
}
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"
NORM_EPS = 1e-6  # every GroupNorm in the SD VAE (diffusers passes resnet_eps=1e-6 throughout)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """diffusers' AutoencoderKL config (defaults: stabilityai/sd-vae-ft-ema / -mse) + compute dtypes."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (DOWN_BLOCK,) * 4
    up_block_types: tuple[str, ...] = (UP_BLOCK,) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 256          # only used by diffusers' tiling; kept so configs round-trip
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    # How it is computed (does not change the parameters):
    dtype: str = "float32"          # compute dtype; GroupNorm and softmax always run in float32
    param_dtype: str = "float32"

    def __post_init__(self):
        # Tuples keep the config hashable (it is a static argument of the jitted helpers).
        for field in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        n = len(self.block_out_channels)
        problems = []
        if n < 1:
            problems.append("block_out_channels is empty")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            problems.append(f"{len(self.down_block_types)} down / {len(self.up_block_types)} up block types for "
                            f"{n} block_out_channels (need one of each per level)")
        if any(t != DOWN_BLOCK for t in self.down_block_types) or any(t != UP_BLOCK for t in self.up_block_types):
            problems.append(f"only {DOWN_BLOCK} / {UP_BLOCK} blocks are implemented, got "
                            f"{self.down_block_types} / {self.up_block_types}")
        bad = [c for c in self.block_out_channels if c < 1 or c % self.norm_num_groups]
        if bad:
            problems.append(f"block_out_channels {bad} not divisible by norm_num_groups={self.norm_num_groups}")
        if self.act_fn not in ACTIVATIONS:
            problems.append(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {self.act_fn!r}")
        for field in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
            problems.append(f"dtype/param_dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}/{self.param_dtype!r}")
        if problems:
            raise ValueError("invalid VAE config: " + "; ".join(problems))

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent along each side (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the parameters' shapes and meaning (what a checkpoint must match)."""
        skip = ("dtype", "param_dtype", "sample_size")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VAEConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown VAE config keys {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**d)


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm(affine=True) over NHWC, statistics and affine in float32.

    Written out (rather than flax's GroupNorm) to pin down the numerics: two-pass variance
    like PyTorch, and float32 even under bfloat16 compute, since the VAE's activations reach
    magnitudes where bfloat16 statistics visibly shift colours.
    """

    num_groups: int
    epsilon: float = NORM_EPS
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (c,), self.param_dtype)
        g = x.astype(jnp.float32).reshape(*x.shape[:-1], self.num_groups, c // self.num_groups)
        axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)  # all positions and the channels of a group
        mean = jnp.mean(g, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def _conv(features: int, kernel: int, name: str, dtype, param_dtype, strides: int = 1, padding=None) -> nn.Conv:
    """A PyTorch-style Conv2d: 'same' padding (k // 2 each side) unless given explicitly."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                   padding=padding if padding is not None else ((pad, pad), (pad, pad)),
                   dtype=dtype, param_dtype=param_dtype, name=name)


class _Base(nn.Module):
    """Shared fields: every submodule knows the config and derives dtypes from it."""

    config: VAEConfig

    @property
    def dtype(self):
        return DTYPES[self.config.dtype]

    @property
    def param_dtype(self):
        return DTYPES[self.config.param_dtype]

    def conv(self, features: int, kernel: int, name: str, **kw) -> nn.Conv:
        return _conv(features, kernel, name, self.dtype, self.param_dtype, **kw)

    def norm(self, name: str) -> GroupNorm:
        return GroupNorm(self.config.norm_num_groups, param_dtype=self.param_dtype, name=name)

    def act(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.config.act_fn](x)


class ResnetBlock(_Base):
    """diffusers ResnetBlock2D without a time embedding: x + conv(act(norm(conv(act(norm(x))))))."""

    out_channels: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv(self.out_channels, 3, "conv1")(self.act(self.norm("norm1")(x)))
        h = self.conv(self.out_channels, 3, "conv2")(self.act(self.norm("norm2")(h)))  # dropout is 0
        if x.shape[-1] != self.out_channels:  # a 1x1 projection only where the width changes
            x = self.conv(self.out_channels, 1, "conv_shortcut")(x)
        return x.astype(h.dtype) + h  # output_scale_factor is 1 in the VAE


class Downsample(_Base):
    """Halve H and W: pad one zero row/column at the bottom/right only, then a stride-2 3x3 conv.

    The asymmetric pad is the original LDM's (diffusers' `padding=0` path): a symmetric pad of 1
    would shift the sampling grid by half a pixel and not match the trained weights.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x.shape[-1], 3, "conv", strides=2, padding=((0, 1), (0, 1)))(x)


class Upsample(_Base):
    """Double H and W: nearest-neighbour x2 (each pixel repeated) then a 3x3 conv."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return self.conv(x.shape[-1], 3, "conv")(x)


class AttnBlock(_Base):
    """The mid-block self-attention: one head over all H*W positions, with its own GroupNorm.

    diffusers' Attention(heads=1, dim_head=C, residual_connection=True, upcast_softmax=True):
    x + to_out(softmax(q k^T / sqrt(C)) v) with q, k, v = to_q/to_k/to_v(group_norm(x)).
    The logits and softmax are float32 (the 1/sqrt(C) logits of bfloat16 q, k would lose the
    small differences the softmax amplifies).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        dense = functools.partial(nn.Dense, c, dtype=self.dtype, param_dtype=self.param_dtype)
        y = self.norm("group_norm")(x).reshape(b, h * w, c)
        q, k, v = dense(name="to_q")(y), dense(name="to_k")(y), dense(name="to_v")(y)
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) * (c ** -0.5)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = dense(name="to_out")(jnp.einsum("bqk,bkc->bqc", probs, v))
        return x.astype(out.dtype) + out.reshape(b, h, w, c)  # rescale_output_factor is 1


class MidBlock(_Base):
    """diffusers UNetMidBlock2D at the lowest resolution: resnet, attention, resnet."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = ResnetBlock(self.config, c, name="resnets_0")(x)
        if self.config.mid_block_add_attention:
            x = AttnBlock(self.config, name="attention")(x)
        return ResnetBlock(self.config, c, name="resnets_1")(x)


class DownBlock(_Base):
    """DownEncoderBlock2D: `num_layers` resnets, then (except at the last level) a Downsample."""

    out_channels: int = 0
    num_layers: int = 1
    add_downsample: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.config, self.out_channels, name=f"resnets_{j}")(x)
        return Downsample(self.config, name="downsample")(x) if self.add_downsample else x


class UpBlock(_Base):
    """UpDecoderBlock2D: `num_layers` resnets, then (except at the last level) an Upsample."""

    out_channels: int = 0
    num_layers: int = 1
    add_upsample: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.config, self.out_channels, name=f"resnets_{j}")(x)
        return Upsample(self.config, name="upsample")(x) if self.add_upsample else x


class Encoder(_Base):
    """Image (B, H, W, in) -> (B, H/f, W/f, 2 * latent): posterior mean and logvar, concatenated."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        chans = cfg.block_out_channels
        x = self.conv(chans[0], 3, "conv_in")(x.astype(self.dtype))
        for i, ch in enumerate(chans):
            x = DownBlock(cfg, ch, cfg.layers_per_block, i < len(chans) - 1, name=f"down_blocks_{i}")(x)
        x = MidBlock(cfg, name="mid_block")(x)
        x = self.act(self.norm("conv_norm_out")(x))
        return self.conv(2 * cfg.latent_channels, 3, "conv_out")(x)  # double_z: mean and logvar


class Decoder(_Base):
    """Latent (B, h, w, latent) -> image (B, h*f, w*f, out), mirroring the encoder (widest level first).

    Each up block has layers_per_block + 1 resnets (one more than the encoder's down blocks).
    """

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        chans = tuple(reversed(cfg.block_out_channels))
        x = self.conv(chans[0], 3, "conv_in")(z.astype(self.dtype))
        x = MidBlock(cfg, name="mid_block")(x)
        for i, ch in enumerate(chans):
            x = UpBlock(cfg, ch, cfg.layers_per_block + 1, i < len(chans) - 1, name=f"up_blocks_{i}")(x)
        x = self.act(self.norm("conv_norm_out")(x))
        return self.conv(cfg.out_channels, 3, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """KL autoencoder: `encode` gives the posterior moments, `decode` maps latents to images.

    Latents here are *unscaled* (as diffusers' encode/decode); `encode_latents` /
    `decode_latents` apply the scaling factor that the diffusion model's latents carry.
    Calling the module (used by `init`) reconstructs x from the posterior mean.
    """

    config: VAEConfig

    def setup(self):
        cfg = self.config
        dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = _conv(2 * cfg.latent_channels, 1, None, dtype, param_dtype) if cfg.use_quant_conv else None
        self.post_quant_conv = (_conv(cfg.latent_channels, 1, None, dtype, param_dtype)
                                if cfg.use_post_quant_conv else None)

    def _check(self, x: jax.Array, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[-1] != channels:
            hint = " (NCHW? this model is NHWC)" if x.ndim == 4 and x.shape[1] == channels else ""
            raise ValueError(f"{what} must be NHWC (B, H, W, {channels}), got shape {tuple(x.shape)}{hint}")

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images (B, H, W, in_channels), about [-1, 1] -> posterior (mean, logvar), float32.

        H and W should be multiples of `config.downsample_factor` (8) for decode to give the
        same size back; other sizes run (as in diffusers) but round down.
        """
        self._check(x, self.config.in_channels, "images")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        # diffusers' DiagonalGaussianDistribution clamps so exp(0.5 * logvar) stays finite and nonzero.
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """Unscaled latents (B, h, w, latent_channels) -> images (B, h*8, w*8, out_channels), float32."""
        self._check(z, self.config.latent_channels, "latents")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z.astype(DTYPES[self.config.dtype]))
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, _ = self.encode(x)
        return self.decode(mean)


@functools.partial(jax.jit, static_argnames=("config",))
def init_params(config: VAEConfig, key: jax.Array) -> dict:
    """Freshly initialised parameters (jitted: op-by-op init of the full model is slow)."""
    x = jnp.zeros((1, config.downsample_factor, config.downsample_factor, config.in_channels), DTYPES[config.dtype])
    return AutoencoderKL(config).init(key, x)["params"]


def abstract_params(config: VAEConfig) -> dict:
    """The parameter tree as jax.ShapeDtypeStructs, without computing anything."""
    return jax.eval_shape(init_params, config, jax.random.key(0))


@functools.partial(jax.jit, static_argnames=("config",))
def encode_latents(params: Any, images: jax.Array, key: jax.Array, config: VAEConfig = VAEConfig()) -> jax.Array:
    """Images (B, H, W, 3) in [-1, 1] -> diffusion latents: a posterior sample times the scaling factor.

    The reference's `vae.encode(x).latent_dist.sample().mul_(0.18215)`: mean + std * noise,
    noise ~ N(0, 1) drawn from `key`, std = exp(0.5 * clamped logvar).
    """
    mean, logvar = AutoencoderKL(config).apply({"params": params}, images, method="encode")
    noise = jax.random.normal(key, mean.shape, jnp.float32)
    return config.scaling_factor * (mean + jnp.exp(0.5 * logvar) * noise)


@functools.partial(jax.jit, static_argnames=("config",))
def decode_latents(params: Any, latents: jax.Array, config: VAEConfig = VAEConfig()) -> jax.Array:
    """Diffusion latents (B, h, w, 4) -> images (B, 8h, 8w, 3), roughly [-1, 1] (not clipped).

    The reference's `vae.decode(z / 0.18215).sample`.
    """
    z = latents.astype(jnp.float32) / config.scaling_factor
    return AutoencoderKL(config).apply({"params": params}, z, method="decode")
