"""LightningDiT (hustvl/LightningDiT) PyTorch weights <-> our params, both ways.

A LightningDiT state dict is the DiT's (the same names for the embedders, qkv, proj, adaLN and final
layer) plus, per option:
  use_rmsnorm: blocks.i.norm1.weight, blocks.i.norm2.weight, final_layer.norm_final.weight;
  use_qknorm:  blocks.i.attn.{q,k}_norm.weight (+ .bias when LayerNorm, i.e. without use_rmsnorm);
  use_swiglu:  blocks.i.mlp.w12.{weight,bias} (rows: the SiLU half, then the linear half), mlp.w3.*,
               in place of mlp.fc1 / mlp.fc2;
  use_rope:    the buffers feat_rope.freqs_cos / freqs_sin (fixed tables, checked, not stored);
  wo_shift:    adaLN_modulation.1 of 4 * hidden rows instead of 6.
The options are read off the names, so `from_torch` needs no flags. Its train.py checkpoints are
{'model', 'ema', 'opt', ...}; `dit_jax.convert.torch_io.load_state_dict` takes the EMA from them, as its
inference.py does. State dicts here are `{name: numpy array}` (the mapping needs no PyTorch).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np

from dit_jax.convert import dit_torch
from dit_jax.convert.tree_paths import get_path, set_path
from dit_jax.models.dit import LIGHTNING_OPTIONS, SIZES, DiTConfig
from dit_jax.models.layers import sincos_2d_pos_embed, swiglu_hidden
from dit_jax.models.params import check_fields, stack_blocks, unstack_blocks
from dit_jax.models.rope import rope_tables

Array = np.ndarray
# Hidden size -> heads of LightningDiT's named sizes (B, L, XL as DiT, and its 1.0B and 1.6B).
HEADS = {**{hidden: heads for _, hidden, heads in SIZES.values()}, 1536: 24, 1792: 28}


def _option_entries(cfg: DiTConfig):
    """(torch suffix, our sub-path, torch->ours, ours->torch) of each block's option parameters."""
    d = cfg.hidden_size
    h = swiglu_hidden(d, cfg.mlp_ratio)
    out = []
    if cfg.use_rmsnorm:
        out += [("norm1.weight", ("norm1", "scale"), None, None), ("norm2.weight", ("norm2", "scale"), None, None)]
    if cfg.use_qknorm:
        for which in ("q", "k"):
            out.append((f"attn.{which}_norm.weight", ("attn", f"{which}_norm", "scale"), None, None))
            if not cfg.use_rmsnorm:
                out.append((f"attn.{which}_norm.bias", ("attn", f"{which}_norm", "bias"), None, None))
    if cfg.use_swiglu:
        out += [("mlp.w12.weight", ("mlp", "w12", "kernel"), lambda w: w.T.reshape(d, 2, h),
                 lambda k: k.reshape(d, 2 * h).T),
                ("mlp.w12.bias", ("mlp", "w12", "bias"), lambda b: b.reshape(2, h), lambda b: b.reshape(2 * h)),
                ("mlp.w3.weight", ("mlp", "w3", "kernel"), dit_torch._linear, dit_torch._linear),
                ("mlp.w3.bias", ("mlp", "w3", "bias"), None, None)]
    return out


def _entries(cfg: DiTConfig):
    yield from dit_torch._top_entries(cfg)
    if cfg.use_rmsnorm:
        yield "final_layer.norm_final.weight", ("final_norm", "scale"), None, None
    block = [e for e in dit_torch._block_entries(cfg) if not (cfg.use_swiglu and e[0].startswith("mlp."))]
    for i in range(cfg.depth):
        for suffix, path, fwd, bwd in block + _option_entries(cfg):
            yield f"blocks.{i}.{suffix}", (f"blocks_{i}",) + path, fwd, bwd


def _buffers(cfg: DiTConfig) -> dict[str, Array]:
    """The fixed tables a LightningDiT state dict carries: pos_embed, and the RoPE tables with use_rope."""
    grid = cfg.input_size // cfg.patch_size
    out = {"pos_embed": sincos_2d_pos_embed(cfg.hidden_size, grid)[None]}
    if cfg.use_rope:
        out["feat_rope.freqs_cos"], out["feat_rope.freqs_sin"] = rope_tables(cfg.hidden_size // cfg.num_heads, grid)
    return out


def _need(sd: Mapping[str, Array], name: str) -> Array:
    if name not in sd:
        raise KeyError(f"{name!r} not in the state dict: this is not a LightningDiT state dict")
    return sd[name]


def _heads(sd, hidden: int, config: DiTConfig | None, num_heads: int | None) -> int:
    if config is not None:
        return config.num_heads
    if num_heads is not None:
        return num_heads
    if "feat_rope.freqs_cos" in sd:  # RoPE's table is head_dim wide
        return hidden // int(sd["feat_rope.freqs_cos"].shape[-1])
    if hidden in HEADS:
        return HEADS[hidden]
    raise ValueError(f"cannot infer the number of heads of a LightningDiT with hidden size {hidden}: pass num_heads")


def infer_config(sd: Mapping[str, Array], config: DiTConfig | None = None,
                 num_heads: int | None = None) -> DiTConfig:
    """The model config (architecture and the five options) of a LightningDiT state dict; `config`, if
    given, must agree, and its compute settings are kept."""
    w = _need(sd, "x_embedder.proj.weight")
    hidden, in_ch, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    tokens = int(sd["pos_embed"].shape[1]) if "pos_embed" in sd else (config.num_tokens if config else None)
    if tokens is None:
        raise KeyError("'pos_embed' missing and no config given: cannot infer the input size")
    out = int(_need(sd, "final_layer.linear.weight").shape[0]) // (p * p)
    dropout = config.class_dropout_prob if config is not None else 0.1
    options = dict(use_rmsnorm="blocks.0.norm1.weight" in sd, use_qknorm="blocks.0.attn.q_norm.weight" in sd,
                   use_swiglu="blocks.0.mlp.w12.weight" in sd, use_rope="feat_rope.freqs_cos" in sd,
                   wo_shift=int(_need(sd, "blocks.0.adaLN_modulation.1.weight").shape[0]) == 4 * hidden)
    if options["use_swiglu"]:
        ratio = config.mlp_ratio if config is not None else 4.0
        width = int(_need(sd, "blocks.0.mlp.w3.weight").shape[1])
        if swiglu_hidden(hidden, ratio) != width:
            raise ValueError(f"SwiGLU width {width} is not int(2/3 * int({hidden} * {ratio})): give the mlp_ratio")
    else:
        ratio = int(_need(sd, "blocks.0.mlp.fc1.weight").shape[0]) / hidden
    found = dict(input_size=int(round(tokens ** 0.5)) * p, patch_size=p, in_channels=in_ch, hidden_size=hidden,
                 depth=depth, mlp_ratio=ratio, num_classes=int(_need(sd, "y_embedder.embedding_table.weight").shape[0])
                 - int(dropout > 0), learn_sigma=out == 2 * in_ch)
    if config is not None:
        check_fields(found, config)
        wrong = [f"{k}: checkpoint {v}, config {getattr(config, k)}" for k, v in options.items()
                 if getattr(config, k) != v]
        if wrong:
            raise ValueError("checkpoint does not match the requested model's options: " + "; ".join(wrong))
        return config
    return DiTConfig(**found, **options, num_heads=_heads(sd, hidden, config, num_heads), class_dropout_prob=dropout)


def from_torch(sd: Mapping[str, Array], config: DiTConfig | None = None,
               num_heads: int | None = None) -> tuple[dict, DiTConfig]:
    """LightningDiT state dict -> (params, config). Unknown or missing names are errors; the fixed
    tables (pos_embed, RoPE) must be the ones this model computes."""
    sd = {k: np.asarray(v).copy() for k, v in sd.items()}
    cfg = infer_config(sd, config, num_heads)
    params: dict = {}
    used = set()
    for name, path, fwd, _ in _entries(cfg):
        set_path(params, path, np.asarray(fwd(_need(sd, name)) if fwd else _need(sd, name), dtype=np.float32))
        used.add(name)
    for name, table in _buffers(cfg).items():
        if name in sd and not np.allclose(sd[name].reshape(table.shape), table, atol=1e-5):
            raise ValueError(f"the checkpoint's {name} is not the fixed table this model computes")
        used.add(name)
    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"unexpected names in the state dict (first: {unused[:5]}); is it a LightningDiT "
                         f"checkpoint with {cfg.depth} blocks?")
    dit_torch._check_shapes(params, cfg)
    return (stack_blocks(params, cfg.depth) if cfg.scan_blocks else params), cfg


def to_torch(params: Mapping, config: DiTConfig) -> dict[str, Array]:
    """Our params -> LightningDiT state dict (numpy), with its fixed buffers."""
    if "blocks" in params:
        params = unstack_blocks(params, config.depth)
    sd = _buffers(config)
    for name, path, _, bwd in _entries(config):
        arr = np.asarray(get_path(params, path), dtype=np.float32)
        sd[name] = np.ascontiguousarray(bwd(arr) if bwd else arr)
    return sd


def lightningdit_kwargs(config: DiTConfig) -> dict:
    """The official `LightningDiT(...)` constructor arguments of `config`."""
    keep = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
            "class_dropout_prob", "num_classes", "learn_sigma") + LIGHTNING_OPTIONS
    return {k: v for k, v in dataclasses.asdict(config).items() if k in keep}
