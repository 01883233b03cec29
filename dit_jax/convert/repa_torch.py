"""REPA's SiT checkpoints (sihyun-yu/REPA train.py: {'model', 'ema', 'opt', 'args', 'steps'}; generate.py
samples from its 'ema') <-> our params, both ways.

REPA's SiT carries DiT's parameter names (its backbone converts with dit_jax.convert.dit_torch, built with
learn_sigma=False: REPA's SiT predicts v only) plus `projectors.{i}.{0,2,4}.{weight,bias}`, the three
Linears of each encoder's projector MLP. They become params[models.repa.PROJECTORS]['projector_{i}_fc{1,2,3}']:
kept for resuming training, ignored by sampling (the DiT's apply does not read them).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from dit_jax.convert.dit_torch import from_torch, to_torch
from dit_jax.convert.layouts import linear_from_torch
from dit_jax.models.dit import DiTConfig
from dit_jax.models.repa import PROJECTORS

_NAME = re.compile(r"projectors\.(\d+)\.([024])\.(weight|bias)")
_FC = {"0": "fc1", "2": "fc2", "4": "fc3"}


def split_projectors(sd: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """(backbone state dict, projector entries) of a REPA SiT state dict."""
    backbone = {k: v for k, v in sd.items() if not k.startswith("projectors.")}
    proj = {k: v for k, v in sd.items() if k.startswith("projectors.")}
    bad = [k for k in proj if not _NAME.fullmatch(k)]
    if bad:
        raise ValueError(f"unexpected projector entries in a REPA checkpoint (first: {bad[:3]}); expected "
                         "projectors.{i}.{0,2,4}.{weight,bias}")
    return backbone, proj


def from_repa_torch(sd: Mapping[str, np.ndarray], config: DiTConfig | None = None,
                    num_heads: int | None = None) -> tuple[dict, DiTConfig, tuple]:
    """REPA SiT state dict -> (params with PROJECTORS, the backbone's config, z_dims per projector)."""
    backbone, proj = split_projectors(sd)
    params, cfg = from_torch(backbone, config, num_heads)
    if cfg.learn_sigma:
        raise ValueError("REPA's SiT predicts v only: convert its backbone with learn_sigma=False (its final layer "
                         f"has {cfg.out_channels} channels here)")
    out: dict = {}
    for k, v in proj.items():
        i, layer, leaf = _NAME.fullmatch(k).groups()
        value = np.ascontiguousarray(linear_from_torch(np.asarray(v))) if leaf == "weight" else np.asarray(v)
        out.setdefault(f"projector_{i}_{_FC[layer]}", {})["kernel" if leaf == "weight" else "bias"] = (
            value.astype(np.float32))
    count = len({k.split("_")[1] for k in out})
    missing = [f"projector_{i}_{fc}" for i in range(count) for fc in _FC.values() if f"projector_{i}_{fc}" not in out]
    if missing:
        raise ValueError(f"a REPA checkpoint with incomplete projectors (missing {missing[:3]})")
    z_dims = tuple(int(out[f"projector_{i}_fc3"]["kernel"].shape[1]) for i in range(count))
    return ({**params, PROJECTORS: out} if out else params), cfg, z_dims


def to_repa_torch(params: Mapping, config: DiTConfig) -> dict[str, np.ndarray]:
    """Our params (with or without PROJECTORS) -> REPA's SiT state dict, numpy."""
    sd = to_torch({k: v for k, v in params.items() if k != PROJECTORS}, config)
    for name, leaves in params.get(PROJECTORS, {}).items():
        _, i, fc = name.split("_")
        layer = {v: k for k, v in _FC.items()}[fc]
        sd[f"projectors.{i}.{layer}.weight"] = np.ascontiguousarray(np.asarray(leaves["kernel"], np.float32).T)
        sd[f"projectors.{i}.{layer}.bias"] = np.asarray(leaves["bias"], np.float32)
    return sd
