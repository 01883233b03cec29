"""diffusers AutoencoderKL weights (sd-vae-ft-ema / sd-vae-ft-mse) -> our VAE params.

    params = load_diffusers_vae("path/to/sd-vae-ft-ema")     # folder, .safetensors or .bin
    params = vae_from_diffusers(state_dict)                   # {name: numpy array}

Our parameter tree mirrors diffusers' module names, so the name mapping is a short set of
rules applied to every one of our parameters (`diffusers_name`); the state dict must then hold
exactly those names with the matching shapes, and anything else is an error that says what is
missing, extra or mis-shaped. Layouts: conv weights (out, in, kh, kw) -> (kh, kw, in, out),
linear weights (out, in) -> (in, out); GroupNorm weight -> scale.

Files published before diffusers 0.14 name the mid-block attention `query/key/value/proj_attn`;
diffusers renames these to `to_q/to_k/to_v/to_out.0` at load time
(`ModelMixin._fix_state_dict_keys_on_load`) and so do we.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping

import jax.numpy as jnp
import numpy as np

from dit_jax.convert.layouts import from_torch_by_rank, to_torch_by_rank
from dit_jax.models.dit import DTYPES
from dit_jax.models.vae import DOWN_BLOCK, UP_BLOCK, VAEConfig, abstract_params

Array = np.ndarray

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
EXPECTED = ("a diffusers AutoencoderKL state dict (names like 'encoder.conv_in.weight', "
            "'encoder.down_blocks.0.resnets.0.norm1.weight', 'quant_conv.weight', "
            "'decoder.up_blocks.0.upsamplers.0.conv.weight')")


class VAECheckpointError(ValueError):
    """The state dict or file is not (or not entirely) a diffusers AutoencoderKL for this config."""


# -- names -----------------------------------------------------------------------------------
# Our module names -> diffusers': list members are `name_i` here and `name.i` there; single
# modules that diffusers keeps in a one-element ModuleList get their `.0` back.
_SEGMENTS = {"downsample": "downsamplers.0", "upsample": "upsamplers.0", "attention": "attentions.0",
             "to_out": "to_out.0"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
# Pre-0.14 diffusers names of the mid-block attention (see _fix_state_dict_keys_on_load).
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def diffusers_name(path: Iterable[str]) -> str:
    """('encoder', 'down_blocks_0', 'resnets_1', 'conv1', 'kernel') -> 'encoder.down_blocks.0.resnets.1.conv1.weight'."""
    *modules, leaf = path
    parts = [_SEGMENTS.get(m) or re.sub(r"^(down_blocks|up_blocks|resnets)_(\d+)$", r"\1.\2", m) for m in modules]
    return ".".join(parts + [_LEAVES[leaf]])


def _is_float(a: Array) -> bool:
    return bool(jnp.issubdtype(a.dtype, jnp.floating))  # numpy's own test misses ml_dtypes.bfloat16


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:   # conv kernel (kh, kw, in, out) <- (out, in, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:   # dense kernel (in, out) <- (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


_from_torch = from_torch_by_rank
_to_torch = to_torch_by_rank


def expected_state_dict(config: VAEConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """{diffusers name: (our param path, diffusers shape)} for every parameter of `config`'s model."""
    import jax
    out = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]:
        path = tuple(k.key for k in kp)
        out[diffusers_name(path)] = (path, _to_torch_shape(tuple(leaf.shape)))
    return out


# -- recognising what a state dict is ----------------------------------------------------------
def _looks_like(names: set[str]) -> str | None:
    """A description of a state dict that is not a diffusers AutoencoderKL, or None."""
    def has(prefix: str) -> bool:
        return any(n.startswith(prefix) for n in names)

    if has("first_stage_model.") or has("model.diffusion_model."):
        return ("a full CompVis/LDM-format Stable Diffusion checkpoint (its VAE sits under 'first_stage_model.' in the "
                "original naming); use the separately published diffusers VAE (stabilityai/sd-vae-ft-ema) instead")
    if any(re.match(r"(encoder|decoder)\.(down|up)\.\d+\.block\.", n) for n in names) or has("encoder.mid.") \
            or has("decoder.mid."):
        return ("an original CompVis/LDM-format autoencoder (names like 'encoder.down.0.block.0.conv1.weight'); convert "
                "it to the diffusers layout first (diffusers' AutoencoderKL.from_single_file(...).save_pretrained(...)) "
                "or use the published diffusers files")
    if "x_embedder.proj.weight" in names or has("blocks.0.attn.qkv."):
        return "an official DiT state dict (load it with dit_jax.convert.dit_torch.from_torch)"
    if "pos_embed.proj.weight" in names or has("transformer_blocks."):
        return "a diffusers transformer such as DiTTransformer2DModel (see dit_jax.convert.dit_torch.from_diffusers)"
    if has("time_embedding.") or (has("down_blocks.") and has("up_blocks.")):
        return "a diffusers UNet (UNet2DModel / UNet2DConditionModel): top-level down_blocks/up_blocks, no encoder/decoder"
    if not any(n.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for n in names):
        return "no VAE at all: no 'encoder.*', 'decoder.*' or '*quant_conv.*' names"
    return None


def _file_architecture(sd: Mapping[str, Array]) -> dict[str, Any]:
    """What architecture fields can be read off a (diffusers-named) VAE state dict; best effort."""
    arch: dict[str, Any] = {}

    def shape(name: str):
        return tuple(sd[name].shape) if name in sd else None

    if (s := shape("encoder.conv_in.weight")) and len(s) == 4:
        arch["in_channels"] = s[1]
    levels = sorted({int(m.group(1)) for n in sd if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", n))})
    chans = [shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight") for i in levels]
    if levels and all(chans):
        arch["block_out_channels"] = tuple(s[0] for s in chans)
    layers = {int(m.group(1)) for n in sd if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", n))}
    if layers:
        arch["layers_per_block"] = len(layers)
    if (s := shape("decoder.conv_in.weight")) and len(s) == 4:
        arch["latent_channels"] = s[1]
    if (s := shape("decoder.conv_out.weight")) and len(s) == 4:
        arch["out_channels"] = s[0]
    arch["mid_block_add_attention"] = any(".mid_block.attentions." in n for n in sd)
    arch["use_quant_conv"] = "quant_conv.weight" in sd
    arch["use_post_quant_conv"] = "post_quant_conv.weight" in sd
    return arch


def _architecture_hint(sd: Mapping[str, Array], config: VAEConfig) -> str:
    want = config.architecture()
    diffs = [f"{k}={v!r} (config: {want[k]!r})" for k, v in _file_architecture(sd).items() if want.get(k) != v]
    if not diffs:
        return ""
    return "; the file looks like a different VAE architecture: " + ", ".join(diffs)


def _first(names: Iterable[str], n: int = 5) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(repr(x) for x in names[:n]) + more


def rename_legacy_attention(sd: Mapping[str, Array]) -> dict[str, Array]:
    """query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0 under `*.attentions.N` (diffusers' load-time fix)."""
    out = dict(sd)
    for name in list(sd):
        m = re.fullmatch(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)", name)
        if m:
            new = f"{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}"
            if new in sd:
                raise VAECheckpointError(f"the state dict has both the old name {name!r} and the new {new!r}")
            out[new] = out.pop(name)
    return out


# -- conversion ---------------------------------------------------------------------------------
def vae_from_diffusers(state_dict: Mapping[str, Any], config: VAEConfig | None = None) -> dict:
    """diffusers AutoencoderKL state dict ({name: array}) -> our params (nested dict of numpy arrays).

    `config` (default: the SD VAE, `VAEConfig()`) fixes the expected names and shapes; every
    parameter must be present with its shape and nothing else may be.
    """
    config = config or VAEConfig()
    names = set(state_dict)
    if (what := _looks_like(names)) is not None:
        raise VAECheckpointError(f"not {EXPECTED}: this looks like {what}. First names: {_first(names, 3)}")
    sd = rename_legacy_attention({k: np.asarray(v) for k, v in state_dict.items()})
    expected = expected_state_dict(config)
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(expected)} parameters missing (first: {_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected names (first: {_first(unexpected)})")
        raise VAECheckpointError("the state dict does not match the VAE config: " + "; ".join(parts)
                                 + _architecture_hint(sd, config))
    bad = [f"{name}: expected {shape}, got {tuple(sd[name].shape)}"
           for name, (_, shape) in sorted(expected.items()) if tuple(sd[name].shape) != shape]
    if bad:
        raise VAECheckpointError(f"{len(bad)} parameters have the wrong shape (first: {'; '.join(bad[:3])})"
                                 + _architecture_hint(sd, config))
    dtype = DTYPES[config.param_dtype]
    params: dict = {}
    for name, (path, _) in expected.items():
        w = sd[name]
        if not _is_float(w):
            raise VAECheckpointError(f"{name}: expected floating-point weights, got {w.dtype}")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = _from_torch(w.astype(np.float32)).astype(dtype)
    return params


def vae_to_diffusers(params: Mapping, config: VAEConfig | None = None) -> dict[str, Array]:
    """Our params -> a diffusers AutoencoderKL state dict (float32 numpy), the inverse of vae_from_diffusers."""
    out = {}
    for name, (path, _) in expected_state_dict(config or VAEConfig()).items():
        node = params
        for key in path:
            node = node[key]
        out[name] = _to_torch(np.asarray(node, dtype=np.float32))
    return out


# -- diffusers config.json ------------------------------------------------------------------------
# AutoencoderKL.__init__'s defaults, for fields an older config.json leaves out.
_DIFFUSERS_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=(DOWN_BLOCK,), up_block_types=(UP_BLOCK,),
                           block_out_channels=(64,), layers_per_block=1, act_fn="silu", latent_channels=4,
                           norm_num_groups=32, sample_size=32, scaling_factor=0.18215, use_quant_conv=True,
                           use_post_quant_conv=True, mid_block_add_attention=True)


def vae_config_from_diffusers(d: Mapping[str, Any], **overrides) -> VAEConfig:
    """A diffusers AutoencoderKL config.json dict -> VAEConfig (overrides: dtype=..., param_dtype=...)."""
    if d.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise VAECheckpointError(f"config.json is for a {d['_class_name']}, expected AutoencoderKL")
    for field in ("shift_factor", "latents_mean", "latents_std"):
        if d.get(field) is not None:
            raise VAECheckpointError(f"config.json sets {field}={d[field]!r}, which this VAE port does not apply "
                                     "(only SD's scale-only latents are supported)")
    sample_size = d.get("sample_size", _DIFFUSERS_DEFAULTS["sample_size"])
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    fields = {k: d.get(k, default) for k, default in _DIFFUSERS_DEFAULTS.items()}
    return VAEConfig(**{**fields, "sample_size": int(sample_size), **overrides})


def _check_config_json(path: str, config: VAEConfig) -> None:
    with open(path) as f:
        theirs = vae_config_from_diffusers(json.load(f)).architecture()
    ours = config.architecture()
    diffs = [f"{k}: {theirs[k]!r} in config.json, {ours[k]!r} in the config" for k in ours if theirs[k] != ours[k]]
    if diffs:
        raise VAECheckpointError(f"{path} describes a different VAE than the config given: " + "; ".join(diffs)
                                 + " (build the config with vae_config_from_diffusers(json.load(...)))")


# -- files ----------------------------------------------------------------------------------------
def _weights_file(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no VAE weights at {path!r}")
    if not os.path.isdir(path):
        return path
    for folder in (path, os.path.join(path, "vae")):  # a VAE folder, or a pipeline folder with vae/
        for name in WEIGHT_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    raise FileNotFoundError(f"no {' / '.join(WEIGHT_FILES)} in {path!r} (or its vae/ subfolder); found "
                            f"{sorted(os.listdir(path))[:10]}")


def load_state_dict_file(path: str) -> dict[str, Array]:
    """{name: float32 numpy} from a .safetensors file (no PyTorch needed) or a PyTorch .bin/.pt file."""
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            sd = load_file(path)  # bfloat16 tensors come back as ml_dtypes.bfloat16
        except (SafetensorError, OSError, ValueError) as e:
            raise VAECheckpointError(f"{path}: cannot read as safetensors ({e})") from e
        return {k: v.astype(np.float32) if _is_float(v) else v for k, v in sd.items()}
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path} needs PyTorch (or use the .safetensors file)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles holding more than tensors (e.g. Lightning checkpoints)
        raise VAECheckpointError(f"{path}: not a plain PyTorch state dict ({type(e).__name__}: {str(e)[:200]}); "
                                 f"expected {EXPECTED}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # a training checkpoint; _looks_like will say what it holds
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VAECheckpointError(f"{path}: expected a {{name: tensor}} state dict, got {type(obj).__name__}"
                                 + (f" with keys {_first(map(str, obj))}" if isinstance(obj, Mapping) else ""))
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}


def config_beside(path: str) -> VAEConfig:
    """The VAEConfig of the config.json beside a diffusers VAE's weights, else the SD VAE's."""
    config_json = os.path.join(os.path.dirname(_weights_file(path)), "config.json")
    if not os.path.isfile(config_json):
        return VAEConfig()
    with open(config_json) as f:
        return vae_config_from_diffusers(json.load(f))


def load_diffusers_vae(path: str, config: VAEConfig | None = None) -> dict:
    """Our params from a diffusers AutoencoderKL: a folder (with config.json and
    diffusion_pytorch_model.safetensors or .bin, as published for stabilityai/sd-vae-ft-ema and
    sd-vae-ft-mse), a pipeline folder with a vae/ subfolder, or the weights file itself.

    A config.json next to the weights must agree with `config` (default: the SD VAE), including
    the scaling factor, so latents cannot silently be scaled for another VAE.
    """
    config = config or VAEConfig()
    file = _weights_file(path)
    config_json = os.path.join(os.path.dirname(file), "config.json")
    if os.path.isfile(config_json):
        _check_config_json(config_json, config)
    sd = load_state_dict_file(file)
    try:
        return vae_from_diffusers(sd, config)
    except VAECheckpointError as e:
        raise VAECheckpointError(f"{file}: {e}") from None
