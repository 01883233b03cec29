"""A PyTorch statement of DINOv2's backbone (facebookresearch/dinov2 `DinoVisionTransformer` as the hub
builds it: block_chunks=0, init_values=1.0, patch 14, img_size 518), written from its behaviour for
tests/test_dinov2.py. State-dict names are the official ones, so the released .pth files load into it.
Inference only: no masks, no stochastic depth, no nested-tensor (xFormers) path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerScale(nn.Module):
    def __init__(self, dim, value):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(value)))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)      # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFused(nn.Module):
    """g/14's FFN: the hidden width is 2/3 of the MLP's, rounded up to a multiple of 8; w12 = [w1; w2]."""

    def __init__(self, dim, hidden):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, ffn, init_values):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp = (SwiGLUFused if ffn == "swiglu" else Mlp)(dim, int(dim * mlp_ratio))
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    def __init__(self, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, ffn="mlp", num_register_tokens=0,
                 patch_size=14, img_size=518, init_values=1.0, interpolate_antialias=False,
                 interpolate_offset=0.1):
        super().__init__()
        self.patch_size, self.num_register_tokens = patch_size, num_register_tokens
        self.interpolate_antialias, self.interpolate_offset = interpolate_antialias, interpolate_offset
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(1e-6 * torch.randn(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + grid * grid, embed_dim))
        self.register_tokens = (nn.Parameter(1e-6 * torch.randn(1, num_register_tokens, embed_dim))
                                if num_register_tokens else None)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, ffn, init_values) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolate_pos_encoding(self, npatch, h, w):
        """The table as it is when the grid matches and the image is square; else its grid part resized
        with bicubic F.interpolate: by scale factor (h/p + offset)/M when the offset is non-zero, else to
        the size (h/p, w/p); antialias as configured."""
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        m = int(math.sqrt(n))
        h0, w0 = h // self.patch_size, w // self.patch_size
        grid = self.pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            how = dict(scale_factor=((h0 + self.interpolate_offset) / m, (w0 + self.interpolate_offset) / m))
        else:
            how = dict(size=(h0, w0))
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **how)
        assert grid.shape[-2:] == (h0, w0)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([self.pos_embed[:, :1].float(), grid], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x):
        b, _, h, w = x.shape
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x.shape[1] - 1, h, w)
        if self.register_tokens is not None:   # after the positions: registers carry none
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        return x

    def forward_features(self, x):
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        xn = self.norm(x)
        r = self.num_register_tokens
        return {"x_norm_clstoken": xn[:, 0], "x_norm_regtokens": xn[:, 1:r + 1],
                "x_norm_patchtokens": xn[:, r + 1:], "x_prenorm": x}

    def forward(self, x):
        """The hub models' head is the identity: the normalised CLS token."""
        return self.forward_features(x)["x_norm_clstoken"]


_ARCH = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}


def hub_model(arch: str, reg: bool = False, **overrides) -> DinoVisionTransformer:
    """`dinov2_vit{arch}14[_reg]` without weights: g uses the fused SwiGLU; the _reg models have 4
    registers, antialiased interpolation and no offset."""
    d, depth, heads = _ARCH[arch]
    kw = dict(embed_dim=d, depth=depth, num_heads=heads, ffn="swiglu" if arch == "g" else "mlp")
    if reg:
        kw.update(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0)
    kw.update(overrides)
    return DinoVisionTransformer(**kw)


def resample_abs_pos_embed(pos_embed, new_size, num_prefix_tokens=1):
    """timm's `resample_abs_pos_embed` as REPA calls it (bicubic, antialias on, size given)."""
    n = pos_embed.shape[1] - num_prefix_tokens
    if n == new_size[0] * new_size[1] and new_size[0] == new_size[1]:
        return pos_embed
    m = int(math.sqrt(n))
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = grid.float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_size), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
