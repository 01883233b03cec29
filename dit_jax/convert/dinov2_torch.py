"""The official DINOv2 state dicts (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`) <-> our DinoV2 params.

The torch.hub checkpoints are bare state dicts of `DinoVisionTransformer` (block_chunks=0):
cls_token (1, 1, D), pos_embed (1, 1 + 37*37, D), register_tokens (1, 4, D) for the _reg models,
mask_token (1, D), patch_embed.proj.{weight (D, 3, 14, 14), bias}, per block N
blocks.N.{norm1, norm2}.{weight, bias}, blocks.N.attn.qkv.{weight (3D, D), bias},
blocks.N.attn.proj.{weight, bias}, blocks.N.ls1.gamma, blocks.N.ls2.gamma, and the FFN:
blocks.N.mlp.fc1/fc2.{weight, bias} (MLP) or blocks.N.mlp.w12/w3.{weight, bias} (g/14's SwiGLU),
then norm.{weight, bias}. Our params are the same names as a Flax tree (`blocks_N`, kernels
transposed); the inner dict, applied as `DinoV2(config).apply({"params": params}, images)`.

The mapping needs no PyTorch; `load_dinov2` reads a .pth file (torch.load, tensors only) or its .npz
export (`python -m dit_jax.convert.dinov2_torch dinov2_vitl14_pretrain.pth dinov2_vitl14_pretrain.npz`),
which hosts without PyTorch (TPU pods) read with numpy alone.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from dit_jax.convert.layouts import conv_from_torch, conv_to_torch, linear_from_torch, linear_to_torch
from dit_jax.convert.tree_paths import get_path, set_path
from dit_jax.exit_codes import BadInput
from dit_jax.models.dinov2 import DINOV2_NAMES, HUB_NAMES, DinoV2Config, dinov2_config

SAME = (lambda a: a, lambda a: a)
LINEAR = (linear_from_torch, linear_to_torch)
CONV = (conv_from_torch, conv_to_torch)


def _entries(cfg: DinoV2Config):
    """(torch name, our path, torch->ours, ours->torch) for every tensor of the config."""
    yield "cls_token", ("cls_token",), *SAME
    yield "pos_embed", ("pos_embed",), *SAME
    if cfg.num_register_tokens:
        yield "register_tokens", ("register_tokens",), *SAME
    yield "mask_token", ("mask_token",), *SAME
    yield "patch_embed.proj.weight", ("patch_embed", "kernel"), *CONV
    yield "patch_embed.proj.bias", ("patch_embed", "bias"), *SAME
    ffn = ("w12", "w3") if cfg.ffn == "swiglu" else ("fc1", "fc2")
    for i in range(cfg.depth):
        t, o = f"blocks.{i}.", (f"blocks_{i}",)
        for norm in ("norm1", "norm2"):
            yield t + norm + ".weight", o + (norm, "scale"), *SAME
            yield t + norm + ".bias", o + (norm, "bias"), *SAME
        for lin in ("attn.qkv", "attn.proj") + tuple("mlp." + f for f in ffn):
            path = o + tuple(lin.split("."))
            yield t + lin + ".weight", path + ("kernel",), *LINEAR
            yield t + lin + ".bias", path + ("bias",), *SAME
        if cfg.layerscale_init:
            yield t + "ls1.gamma", o + ("ls1", "gamma"), *SAME
            yield t + "ls2.gamma", o + ("ls2", "gamma"), *SAME
    yield "norm.weight", ("norm", "scale"), *SAME
    yield "norm.bias", ("norm", "bias"), *SAME


def expected_shapes(cfg: DinoV2Config, pos_tokens: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in the official state dict of `cfg` (pos_tokens: the table's length)."""
    d, p, h = cfg.embed_dim, cfg.patch_size, cfg.ffn_hidden
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, pos_tokens or 1 + cfg.grid ** 2, d),
              "register_tokens": (1, cfg.num_register_tokens, d), "mask_token": (1, d),
              "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
              "norm.weight": (d,), "norm.bias": (d,)}
    per_block = {"norm1.weight": (d,), "norm1.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
                 "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d),
                 "attn.proj.bias": (d,), "ls1.gamma": (d,), "ls2.gamma": (d,),
                 "mlp.fc1.weight": (h, d), "mlp.fc1.bias": (h,), "mlp.fc2.weight": (d, h), "mlp.fc2.bias": (d,),
                 "mlp.w12.weight": (2 * h, d), "mlp.w12.bias": (2 * h,), "mlp.w3.weight": (d, h), "mlp.w3.bias": (d,)}
    for i in range(cfg.depth):
        shapes.update({f"blocks.{i}.{k}": v for k, v in per_block.items()})
    return {name: shapes[name] for name, *_ in _entries(cfg)}


def _check(sd: Mapping[str, np.ndarray], cfg: DinoV2Config, source: str) -> None:
    pos = sd.get("pos_embed")
    shapes = expected_shapes(cfg, None if pos is None else int(pos.shape[1]))
    missing = sorted(set(shapes) - set(sd))
    unexpected = sorted(set(sd) - set(shapes))
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {shapes[k]})" for k in sorted(set(shapes) & set(sd))
             if tuple(sd[k].shape) != shapes[k]]

    def listed(what, names):
        return [f"{what} {', '.join(names[:6])}" + (" ..." if len(names) > 6 else "")] if names else []
    problems = listed("missing", missing) + listed("unexpected", unexpected) \
        + ([f"wrong shapes {', '.join(wrong[:4])}"] if wrong else [])
    if "register_tokens" in unexpected:
        problems.append("a checkpoint with registers: use the -reg name (e.g. dinov2-vit-b-reg)")
    elif "register_tokens" in missing:
        problems.append("a checkpoint without registers: use the name without -reg")
    if problems:
        raise BadInput(f"{source}: not a DINOv2 state dict of this config (embed {cfg.embed_dim}, depth "
                       f"{cfg.depth}, ffn {cfg.ffn}, {cfg.num_register_tokens} registers): " + "; ".join(problems))


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], config: DinoV2Config,
                           source: str = "state dict") -> dict:
    """Our params (the inner 'params' dict) from an official state dict of numpy arrays or tensors."""
    sd = {k: _numpy(v) for k, v in state_dict.items()}
    _check(sd, config, source)
    params: dict = {}
    for name, path, to_ours, _ in _entries(config):
        set_path(params, path, np.ascontiguousarray(to_ours(sd[name]).astype(np.float32)))
    return params


def state_dict_from_params(params: Mapping, config: DinoV2Config) -> dict[str, np.ndarray]:
    """The official state dict (numpy arrays, PyTorch layouts) of our params."""
    return {name: np.ascontiguousarray(to_torch(np.asarray(get_path(params, path))))
            for name, path, _, to_torch in _entries(config)}


def _numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):   # a torch tensor
        v = v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
    return np.asarray(v)


def weight_file_name(name: str) -> str:
    """The released file of a hub model: dinov2_vitl14_pretrain.pth, dinov2_vitl14_reg4_pretrain.pth, ..."""
    hub = HUB_NAMES[name]
    return hub.replace("_reg", "_reg4") + "_pretrain.pth"


def weight_url(name: str) -> str:
    hub = HUB_NAMES[name]
    return f"https://dl.fbaipublicfiles.com/dinov2/{hub.replace('_reg', '')}/{weight_file_name(name)}"


def _read_state_dict(path: str, name: str) -> Mapping:
    """A state dict from the official .pth (torch.load, tensors only) or its .npz export (numpy only)."""
    fname = weight_file_name(name)
    if path.endswith(".npz"):
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except Exception as e:  # noqa: BLE001 -- zipfile / pickle / format errors of a damaged file
            raise BadInput(f"{path} cannot be read as an .npz state dict ({str(e)[:160]}): export the official "
                           f"{fname} again (python -m dit_jax.convert.dinov2_torch {fname} OUT.npz)") from None
    from dit_jax.convert.torch_io import _torch
    try:
        sd = _torch().load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many kinds for a damaged or foreign file
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise BadInput(f"{path} cannot be read as a PyTorch state dict ({first}): pass the official {fname} "
                       f"({weight_url(name)})") from None
    if not isinstance(sd, Mapping):
        raise BadInput(f"{path}: expected a state dict, got {type(sd).__name__}; pass the official {fname}")
    return sd


def load_dinov2(path_or_dir: str, name: str, **overrides) -> tuple[dict, DinoV2Config]:
    """(params, config) of the hub model `name` from its official .pth or the .npz export of it (a file,
    or a folder holding the released file name, or that name with .npz). Raises BadInput naming the file
    and how to get it when it is missing or wrong."""
    if name not in DINOV2_NAMES:
        raise BadInput(f"unknown DINOv2 encoder {name!r}: choose one of {', '.join(DINOV2_NAMES)}")
    fname = weight_file_name(name)
    path = path_or_dir
    if os.path.isdir(path_or_dir):
        candidates = [os.path.join(path_or_dir, f) for f in (fname, fname[:-len(".pth")] + ".npz")]
        path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    if not os.path.isfile(path):
        raise BadInput(f"DINOv2 weights {path!r} not found: download {weight_url(name)} (the weights of "
                       f"torch.hub.load('facebookresearch/dinov2', '{HUB_NAMES[name]}')) and pass that file "
                       "or its folder")
    config = dinov2_config(name, **overrides)
    return params_from_state_dict(_read_state_dict(path, name), config, source=path), config


def main(argv=None) -> int:
    """python -m dit_jax.convert.dinov2_torch IN.pth OUT.npz: the official state dict as an .npz that
    hosts without PyTorch load (`load_dinov2` reads both); checks it against the config of --name."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("src", help="dinov2_vit*14*_pretrain.pth")
    ap.add_argument("dst", help="output .npz")
    ap.add_argument("--name", default="", help="one of DINOV2_NAMES (default: from the file name)")
    args = ap.parse_args(argv)
    name = args.name or next((n for n in DINOV2_NAMES if weight_file_name(n) == os.path.basename(args.src)), "")
    if not name:
        raise SystemExit(f"error: cannot tell the model from {args.src!r}: pass --name ({', '.join(DINOV2_NAMES)})")
    try:
        params, config = load_dinov2(args.src, name)
    except BadInput as e:
        raise SystemExit(f"error: {e}") from None
    sd = state_dict_from_params(params, config)
    np.savez(args.dst, **sd)
    print(f"wrote {args.dst}: {name}, {len(sd)} tensors, {sum(v.size for v in sd.values()):,} parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
