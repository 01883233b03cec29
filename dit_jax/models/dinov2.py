"""DINOv2 (facebookresearch/dinov2, `dinov2/models/vision_transformer.py` and `layers/`) in Flax Linen.

The frozen encoder of REPA and the detector of EDM2's FD_DINOv2. The four hub backbones, with and
without registers:

    name                embed  depth heads  FFN                          registers  pos-table resize
    dinov2-vit-s(-reg)    384     12     6  GELU MLP, hidden 4D          0 (4)      see below
    dinov2-vit-b(-reg)    768     12    12  GELU MLP, hidden 4D          0 (4)
    dinov2-vit-l(-reg)   1024     24    16  GELU MLP, hidden 4D          0 (4)
    dinov2-vit-g(-reg)   1536     40    24  SwiGLU, fused w12, hidden    0 (4)
                                            (int(4D * 2/3) + 7) // 8 * 8 = 4096

Every block: `x += ls1 * attn(LN(x))`, `x += ls2 * ffn(LN(x))` (pre-norm, LayerNorm eps 1e-6, LayerScale
gammas; the hub models are built with init_values 1.0), qkv and proj with bias, exact (erf) GELU.
Tokens: [CLS, registers..., patches] where the position table (CLS + a 37x37 grid for img_size 518) is
added to [CLS, patches] BEFORE the registers are inserted (registers carry no position). The final
LayerNorm gives `forward_features()`'s dict: x_norm_clstoken (B, D), x_norm_regtokens (B, R, D),
x_norm_patchtokens (B, N, D) and x_prenorm (B, 1 + R + N, D). Patch tokens are in row-major order of
the (H/14, W/14) grid.

`interpolate_pos_encoding` as the official code does it: when the patch grid differs from the table
(or the image is not square), the table's grid part is resized with PyTorch's bicubic `F.interpolate`
(see `dit_jax.models.torch_resize`):
* plain models (`interpolate_offset` 0.1, no antialias): `scale_factor = ((H/14 + 0.1) / M, (W/14 + 0.1)
  / M)`, so the weights use M / (n + 0.1), not M / n (the "historical kludge" of dino issue 8);
* `_reg` models (`interpolate_offset` 0.0, `interpolate_antialias` True): `size = (H/14, W/14)` with
  PyTorch's antialiased bicubic.
REPA instead resamples the table once at load time (`resample_pos_embed`, timm's
`resample_abs_pos_embed`: bicubic to the token grid, antialias on), after which the table already has
the token grid and is used as it is. The table's grid is read from the params, so a resampled table
needs no change of config.

Images are NHWC float32, already normalised (ImageNet mean/std); H and W multiples of 14.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.exit_codes import BadInput
from dit_jax.models.torch_resize import bicubic_matrix, resize_hw

_SIZES = {  # arch letter: (embed_dim, depth, num_heads, ffn)
    "s": (384, 12, 6, "mlp"),
    "b": (768, 12, 12, "mlp"),
    "l": (1024, 24, 16, "mlp"),
    "g": (1536, 40, 24, "swiglu"),
}
DINOV2_NAMES = tuple(f"dinov2-vit-{a}" for a in _SIZES) + tuple(f"dinov2-vit-{a}-reg" for a in _SIZES)
# Official hub entry point of each name (torch.hub.load('facebookresearch/dinov2', HUB_NAMES[name])).
HUB_NAMES = {n: "dinov2_vit" + n.split("-")[2] + "14" + ("_reg" if n.endswith("-reg") else "")
             for n in DINOV2_NAMES}
LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class DinoV2Config:
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    ffn: str = "mlp"                  # "mlp" (fc1-GELU-fc2) or "swiglu" (SwiGLUFFNFused: w12, w3)
    num_register_tokens: int = 0
    patch_size: int = 14
    img_size: int = 518               # the position table's grid is img_size // patch_size (37)
    layerscale_init: float | None = 1.0   # None or 0: no LayerScale (the official `init_values`)
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    dtype: str = "float32"            # compute dtype; params stay float32

    @property
    def ffn_hidden(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":   # SwiGLUFFNFused's rule: 2/3 of the MLP width, rounded up to 8
            return (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


def dinov2_config(name: str, **overrides) -> DinoV2Config:
    """The config of a hub backbone by name (see DINOV2_NAMES), with fields replaced by `overrides`."""
    if name not in DINOV2_NAMES:
        raise BadInput(f"unknown DINOv2 encoder {name!r}: choose one of {', '.join(DINOV2_NAMES)}")
    d, depth, heads, ffn = _SIZES[name.split("-")[2]]
    reg = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0) \
        if name.endswith("-reg") else {}
    fields = {f.name for f in dataclasses.fields(DinoV2Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise BadInput(f"DINOv2 config has no field(s) {', '.join(unknown)}: the fields are "
                       f"{', '.join(sorted(fields))}")
    cfg = dict(embed_dim=d, depth=depth, num_heads=heads, ffn=ffn, **reg)
    cfg.update(overrides)
    return DinoV2Config(**cfg)


def pos_resize_matrices(table_grid: int, grid_hw: tuple[int, int], antialias: bool, offset: float):
    """The (rows, cols) interpolation matrices that `interpolate_pos_encoding` applies to a table of
    table_grid x table_grid positions for a patch grid of grid_hw, or None when it returns the table."""
    h0, w0 = grid_hw
    if h0 * w0 == table_grid * table_grid and h0 == w0:
        return None
    if offset:   # `if self.interpolate_offset:` -- a scale factor, which the weights then use
        sf = ((h0 + offset) / table_grid, (w0 + offset) / table_grid)
        mh = bicubic_matrix(table_grid, scale_factor=sf[0], antialias=antialias)
        mw = bicubic_matrix(table_grid, scale_factor=sf[1], antialias=antialias)
    else:
        mh = bicubic_matrix(table_grid, h0, antialias=antialias)
        mw = bicubic_matrix(table_grid, w0, antialias=antialias)
    if (mh.shape[0], mw.shape[0]) != (h0, w0):   # the official code asserts this too
        raise ValueError(f"pos-embed interpolation gave {mh.shape[0]}x{mw.shape[0]}, expected {h0}x{w0}")
    return mh, mw


def interpolate_pos_encoding(pos_embed: jax.Array, grid_hw: tuple[int, int], antialias: bool,
                             offset: float) -> jax.Array:
    """The official `interpolate_pos_encoding`: pos_embed (1, 1 + M*M, D) -> (1, 1 + h*w, D)."""
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    mats = pos_resize_matrices(m, grid_hw, antialias, offset)
    if mats is None:
        return pos_embed
    if m * m != n:
        raise ValueError(f"position table of {n} patch positions is not a square grid")
    dtype = pos_embed.dtype
    table = pos_embed[0, 1:].astype(jnp.float32).reshape(m, m, -1)
    grid = resize_hw(table, *mats).reshape(1, grid_hw[0] * grid_hw[1], -1)
    return jnp.concatenate([pos_embed[:, :1].astype(jnp.float32), grid], axis=1).astype(dtype)


def resample_pos_embed(params: dict, grid_hw) -> dict:
    """REPA's load-time resample (`timm.layers.pos_embed.resample_abs_pos_embed(pos_embed, grid_hw)`):
    the CLS entry kept, the square grid part resized to grid_hw with bicubic + antialias (size given,
    no offset), unless the table already has that grid. Returns new params (the input is not changed)."""
    gh, gw = (int(grid_hw), int(grid_hw)) if np.isscalar(grid_hw) else (int(grid_hw[0]), int(grid_hw[1]))
    pos = params["pos_embed"]
    n = pos.shape[1] - 1
    if n == gh * gw and gh == gw:
        return params
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"position table of {n} patch positions is not a square grid")
    mh, mw = bicubic_matrix(m, gh, antialias=True), bicubic_matrix(m, gw, antialias=True)
    grid = resize_hw(jnp.asarray(pos[0, 1:], jnp.float32).reshape(m, m, -1), mh, mw)
    new = jnp.concatenate([jnp.asarray(pos[:, :1], jnp.float32), grid.reshape(1, gh * gw, -1)], axis=1)
    return {**params, "pos_embed": new.astype(jnp.asarray(pos).dtype)}


def _precision(dtype):
    # float32 compute means float32 matmuls: keep GPUs from TF32 and TPUs from bf16 passes
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class Attention(nn.Module):
    config: DinoV2Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        b, t, d = x.shape
        h = c.num_heads
        prec = _precision(c.dtype)
        qkv = nn.Dense(3 * d, dtype=c.dtype, precision=prec, name="qkv")(x)
        q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, h, d // h), 2, 0)   # qkv's (3, heads, head_dim) order
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * (d // h) ** -0.5, k, precision=prec)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=prec).reshape(b, t, d)
        return nn.Dense(d, dtype=c.dtype, precision=prec, name="proj")(out)


class FFN(nn.Module):
    config: DinoV2Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        prec = _precision(c.dtype)
        hidden = c.ffn_hidden
        if c.ffn == "swiglu":   # w12 holds [w1; w2]: silu(x w1) * (x w2), then w3
            x1, x2 = jnp.split(nn.Dense(2 * hidden, dtype=c.dtype, precision=prec, name="w12")(x), 2, axis=-1)
            return nn.Dense(c.embed_dim, dtype=c.dtype, precision=prec, name="w3")(nn.silu(x1) * x2)
        x = nn.Dense(hidden, dtype=c.dtype, precision=prec, name="fc1")(x)
        return nn.Dense(c.embed_dim, dtype=c.dtype, precision=prec, name="fc2")(nn.gelu(x, approximate=False))


class LayerScale(nn.Module):
    init_value: float

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
        return x * gamma.astype(x.dtype)


class Block(nn.Module):
    config: DinoV2Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        scale = (lambda name: LayerScale(c.layerscale_init, name=name)) if c.layerscale_init \
            else (lambda name: (lambda y: y))
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=c.dtype, name="norm1")(x)
        x = x + scale("ls1")(Attention(c, name="attn")(y))
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=c.dtype, name="norm2")(x)
        return x + scale("ls2")(FFN(c, name="mlp")(y))


class DinoV2(nn.Module):
    """`DinoVisionTransformer.forward_features` (no masks): images (B, H, W, 3) -> the features dict."""
    config: DinoV2Config

    def _tokens(self, images):
        c = self.config
        d, p = c.embed_dim, c.patch_size
        b, hgt, wid, _ = images.shape
        if hgt % p or wid % p:
            raise ValueError(f"DINOv2 input {hgt}x{wid} is not a multiple of the patch size {p}")
        grid_hw = (hgt // p, wid // p)
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=c.dtype,
                    precision=_precision(c.dtype), name="patch_embed")(images.astype(c.dtype))
        x = x.reshape(b, grid_hw[0] * grid_hw[1], d)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
        # the table's grid comes from the params when given (REPA resamples it at load time)
        shape = self.get_variable("params", "pos_embed").shape if self.has_variable("params", "pos_embed") \
            else (1, 1 + c.grid * c.grid, d)
        pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02), shape, jnp.float32)
        self.param("mask_token", nn.initializers.zeros, (1, d), jnp.float32)   # kept for the state dict
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
        x = x + interpolate_pos_encoding(pos, grid_hw, c.interpolate_antialias,
                                         c.interpolate_offset).astype(x.dtype)
        if c.num_register_tokens:
            reg = self.param("register_tokens", nn.initializers.normal(1e-6),
                             (1, c.num_register_tokens, d), jnp.float32)
            x = jnp.concatenate([x[:, :1], jnp.broadcast_to(reg.astype(x.dtype), (b,) + reg.shape[1:]),
                                 x[:, 1:]], axis=1)
        return x

    @nn.compact
    def __call__(self, images):
        c = self.config
        x = self._tokens(images)
        for i in range(c.depth):
            x = Block(c, name=f"blocks_{i}")(x)
        x_norm = nn.LayerNorm(epsilon=LN_EPS, dtype=c.dtype, name="norm")(x)
        r = c.num_register_tokens
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_regtokens": x_norm[:, 1:r + 1],
                "x_norm_patchtokens": x_norm[:, r + 1:], "x_prenorm": x}
