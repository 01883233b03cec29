"""Reading and writing PyTorch checkpoint files (needs the optional `torch` extra)."""

from __future__ import annotations

import argparse
import os
import zipfile
from typing import Mapping

import numpy as np

TRAIN_CKPT_KEYS = ("model", "ema")


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("reading/writing PyTorch .pt files needs PyTorch: pip install 'dit-jax[torch]'") from None
    return torch


def load_state_dict(path: str, key: str = "ema") -> dict[str, np.ndarray]:
    """A DiT state dict from a .pt file as numpy arrays.

    Accepts the released bare state dicts (`DiT-XL-2-256x256.pt`, EMA weights) and train.py
    checkpoints (a dict with 'model', 'ema', 'opt', 'args'), from which `key` is taken.
    Only tensors and the argparse.Namespace of train.py are unpickled (weights_only loading).
    """
    torch = _torch()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    obj = _torch_load(torch, path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict or a train.py checkpoint dict, got {type(obj).__name__}")
    if any(k in obj for k in TRAIN_CKPT_KEYS):
        if key not in TRAIN_CKPT_KEYS:
            raise ValueError(f"key must be one of {TRAIN_CKPT_KEYS}, got {key!r}")
        if key not in obj:
            raise KeyError(f"{path} is a training checkpoint without {key!r} (has {sorted(obj)})")
        obj = obj[key]
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items()}


def _torch_load(torch, path: str):
    """torch.load of tensors only, with one clear line for a file that is not a (readable) PyTorch checkpoint."""
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK); files of torch < 1.6 are a pickle (protocol 2+: 0x80).
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise ValueError(f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; this "
                         "file is neither): pass the .pt file of an official DiT state dict or train.py checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many kinds (UnpicklingError, RuntimeError, EOFError...)
        # Only the first line: torch's advice to load with weights_only=False would run arbitrary code.
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{path} cannot be read as a PyTorch checkpoint of tensors (damaged, truncated, or holding "
                         f"objects other than tensors): {first}") from None


def save_state_dict(sd: Mapping[str, np.ndarray], path: str) -> None:
    """Write a bare state dict (like the released files) that the official code loads."""
    torch = _torch()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Into a temporary sibling, renamed over `path`: a failed write leaves the old file whole.
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_diffusers_state_dict(path: str) -> dict[str, np.ndarray]:
    """A diffusers DiTTransformer2DModel state dict from a .safetensors/.bin file or its folder."""
    if os.path.isdir(path):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors/.bin in {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in load_file(path).items()}
    return load_state_dict(path)
