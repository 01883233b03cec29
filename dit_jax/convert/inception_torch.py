"""pytorch-fid's FID Inception weights <-> our FIDInceptionV3 variables.

pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` is a bare state dict of its FID Inception
(torchvision's Inception3 with 1008 classes, no aux classifier, FID blocks): for every conv
`<path>.conv.weight` (out, in, kh, kw) and `<path>.bn.{weight,bias,running_mean,running_var}`
(optionally `num_batches_tracked`, ignored), plus `fc.weight` (1008, 2048) and `fc.bias`.
Our variables are `{'params': {..path..: {'conv': {'kernel' (kh, kw, in, out)}, 'bn': {'scale',
'bias'}}, 'fc': {'kernel' (2048, 1008), 'bias'}}, 'batch_stats': {..path..: {'bn': {'mean', 'var'}}}}`
where `path` is the torch module path split at its dots (e.g. Mixed_6d / branch1x1).

State dicts here are `{name: numpy array}`; only `load_fid_inception` of a .pth needs PyTorch.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from dit_jax.convert.tree_paths import get_path, set_path
from dit_jax.convert.layouts import conv_from_torch, conv_to_torch
from dit_jax.models.inception import CONV_SPECS, NUM_LOGITS, POOL_DIM

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
IGNORED_SUFFIXES = (".num_batches_tracked",)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the FID Inception state dict (the ignored num_batches_tracked aside)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path, cin, cout, (kh, kw), _, _ in CONV_SPECS:
        shapes[f"{path}.conv.weight"] = (cout, cin, kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{path}.bn.{stat}"] = (cout,)
    shapes["fc.weight"] = (NUM_LOGITS, POOL_DIM)
    shapes["fc.bias"] = (NUM_LOGITS,)
    return shapes


def _entries():
    """(torch name, collection, our path, torch->ours, ours->torch)."""
    conv = (conv_from_torch, conv_to_torch)
    same = (lambda a: a, lambda a: a)
    for path, *_ in CONV_SPECS:
        p = tuple(path.split("."))
        yield f"{path}.conv.weight", "params", p + ("conv", "kernel"), *conv
        yield f"{path}.bn.weight", "params", p + ("bn", "scale"), *same
        yield f"{path}.bn.bias", "params", p + ("bn", "bias"), *same
        yield f"{path}.bn.running_mean", "batch_stats", p + ("bn", "mean"), *same
        yield f"{path}.bn.running_var", "batch_stats", p + ("bn", "var"), *same
    yield "fc.weight", "params", ("fc", "kernel"), lambda w: w.T, lambda k: k.T
    yield "fc.bias", "params", ("fc", "bias"), *same


def _describe(names, limit: int = 8) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_state_dict(sd: Mapping[str, np.ndarray], source: str = "state dict") -> None:
    """Raise a ValueError naming what is wrong if `sd` is not a complete FID Inception state dict."""
    if not isinstance(sd, Mapping):
        raise ValueError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(sd).__name__}")
    shapes = expected_shapes()
    present = {k for k in sd if not k.endswith(IGNORED_SUFFIXES)}
    missing = set(shapes) - present
    unexpected = present - set(shapes)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(shapes)} tensors missing ({_describe(missing)})")
    if unexpected:
        hint = ""
        if any(k.startswith("AuxLogits.") for k in unexpected):
            hint = " (an aux classifier: torchvision's ImageNet Inception, not the FID one?)"
        elif any(k.startswith("blocks.") for k in unexpected):
            hint = " (keys of a pytorch-fid InceptionV3 wrapper; use the weight file it downloads)"
        problems.append(f"{len(unexpected)} unexpected tensors ({_describe(unexpected)}){hint}")
    for name in sorted(present & set(shapes)):
        shape = tuple(np.shape(sd[name]))
        if shape != shapes[name]:
            problems.append(f"{name} has shape {shape}, expected {shapes[name]}")
        elif not np.issubdtype(np.asarray(sd[name]).dtype, np.floating):
            problems.append(f"{name} has dtype {np.asarray(sd[name]).dtype}, expected floating point")
    if problems:
        if missing and len(missing) == len(shapes):
            problems.insert(0, "this is not pytorch-fid's FID Inception weight file "
                               f"({FID_WEIGHTS_FILE})")
        raise ValueError(f"{source}: " + "; ".join(problems))




def from_torch(sd: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """FID Inception state dict -> {'params', 'batch_stats'} (float32 numpy arrays)."""
    check_state_dict(sd, source)
    variables: dict = {"params": {}, "batch_stats": {}}
    for name, collection, path, fwd, _ in _entries():
        value = np.ascontiguousarray(fwd(np.asarray(sd[name], dtype=np.float32)))
        set_path(variables[collection], path, value)
    return variables


def to_torch(variables: Mapping) -> dict[str, np.ndarray]:
    """Our variables -> the FID Inception state dict (float32 numpy, NCHW / (out, in) layouts)."""
    sd = {}
    for name, collection, path, _, bwd in _entries():
        try:
            value = get_path(variables[collection], path)
        except KeyError:
            raise KeyError(f"variables lack {collection}/{'/'.join(path)} (for {name})") from None
        sd[name] = np.ascontiguousarray(bwd(np.asarray(value, dtype=np.float32)))
    return sd


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A state dict from pytorch-fid's .pth (needs PyTorch) or from an .npz of the same names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no Inception weight file at {path!r} (pytorch-fid's is {FID_WEIGHTS_FILE}, "
                                "from https://github.com/mseitzer/pytorch-fid/releases)")
    if path.endswith(".npz"):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    from dit_jax.convert.torch_io import _torch
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # a truncated download, an HTML error page, a pickle of something else
        raise ValueError(f"{path}: cannot be read as a PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: (v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy())
            if hasattr(v, "detach") else np.asarray(v) for k, v in obj.items()}


def load_fid_inception(path: str) -> dict:
    """{'params', 'batch_stats'} for `FIDInceptionV3` from pytorch-fid's weight file (or an .npz)."""
    return from_torch(load_state_dict(path), source=path)


def save_npz(variables: Mapping, path: str) -> None:
    """Write the weights as an .npz state dict (same names), readable without PyTorch."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **to_torch(variables))
