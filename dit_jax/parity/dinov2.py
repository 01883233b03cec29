"""DINOv2 forward parity: our Flax DinoV2 beside a PyTorch DinoVisionTransformer (the official one from a
checkout, or tests/dinov2_reference) on the same random weights and images, float32.

Used by tests/test_dinov2.py and `tools/compare_torch.py --reference-dinov2 PATH`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.convert.dinov2_torch import params_from_state_dict, state_dict_from_params
from dit_jax.models.dinov2 import DinoV2, DinoV2Config
from dit_jax.parity.common import Row, compare

OUTPUTS = ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm")


def randomize(model, seed: int = 0, std: float = 0.05) -> None:
    """Give every parameter a value the init would not: constants (biases, norms, LayerScale, tokens)
    get noise added, so that a swapped or dropped tensor shows in the outputs."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if name in ("cls_token", "register_tokens", "mask_token"):
                p.copy_(noise * 0.4)
            elif p.ndim < 2 or float(p.std()) == 0.0:
                p.add_(noise)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def torch_features(model, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    import torch
    with torch.no_grad():
        out = model.forward_features(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))))
    return {k: out[k].float().numpy() for k in OUTPUTS}


def our_features(config: DinoV2Config, params: dict, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    out = jax.jit(DinoV2(config).apply)({"params": params}, jnp.asarray(images_nhwc))
    return {k: np.asarray(out[k]) for k in OUTPUTS}


def compare_features(ours: dict, ref: dict, tol: float, label: str) -> list[Row]:
    return [compare(f"{label} {k}", ours[k], ref[k], tol) for k in OUTPUTS if ref[k].size]


def run_dinov2_comparison(model, config: DinoV2Config, sizes=((224, 224), (448, 448)), *, tol: float = 1e-5,
                          batch: int = 2, seed: int = 0, label: str = "",
                          log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Randomise the PyTorch `model`, convert its state dict, and compare forward_features at each
    (H, W); also checks that the conversion is exact both ways."""
    randomize(model, seed)
    model.eval()
    sd = state_dict_numpy(model)
    params = params_from_state_dict(sd, config)
    back = state_dict_from_params(params, config)
    if set(back) != set(sd) or any(not np.array_equal(back[k], sd[k]) for k in sd):
        raise AssertionError("DINOv2 state dict -> params -> state dict is not the identity")
    rows = []
    rng = np.random.default_rng(seed)
    for h, w in sizes:
        images = rng.standard_normal((batch, h, w, 3)).astype(np.float32)
        rows += compare_features(our_features(config, params, images), torch_features(model, images), tol,
                                 f"{label}{h}x{w}")
        log(f"{label}{h}x{w}: done")
    return rows


# What `tools/compare_torch.py --reference-dinov2 PATH` compares by default: two hub models at full
# size (S/14 plain and with registers), and small-depth builds of L/14 and of g/14's SwiGLU (plain and
# with registers) through the same DinoVisionTransformer class with the hub's arguments.
DEFAULT_MODELS = ("dinov2-vit-s", "dinov2-vit-s-reg", "dinov2-vit-l:depth=2", "dinov2-vit-g:depth=2",
                  "dinov2-vit-g-reg:depth=2")


def import_official(path: str):
    """`dinov2.models.vision_transformer` of a facebookresearch/dinov2 checkout (xFormers not needed)."""
    import importlib
    import os
    import sys
    import warnings
    root = os.path.abspath(path)
    if not os.path.isfile(os.path.join(root, "dinov2", "models", "vision_transformer.py")):
        raise ValueError(f"{path} has no dinov2/models/vision_transformer.py: pass the root of a "
                         "facebookresearch/dinov2 checkout")
    sys.path.insert(0, root)
    os.environ.setdefault("XFORMERS_DISABLED", "1")   # the plain PyTorch attention and SwiGLU paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("dinov2.models.vision_transformer")


def official_model(vits, spec: str):
    """(the official model, our config) for 'NAME[:field=value,...]', random init: the hub's constructor
    (`dinov2.hub.backbones.dinov2_vits14(pretrained=False)`, ...) for a bare name, else its
    DinoVisionTransformer with the arguments the hub passes (img_size 518, patch 14, init_values 1.0,
    block_chunks 0, the _reg models' registers / antialias / offset) and the fields replaced."""
    import functools
    import importlib
    from dit_jax.models.dinov2 import HUB_NAMES, dinov2_config
    name, _, extra = spec.partition(":")
    overrides = {k: int(v) for k, v in (kv.split("=") for kv in extra.split(",") if kv)}
    config = dinov2_config(name, **overrides)
    if not overrides:   # the hub's own constructor, without its download
        hub = importlib.import_module("dinov2.hub.backbones")
        return getattr(hub, HUB_NAMES[name])(pretrained=False), config
    model = vits.DinoVisionTransformer(
        img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, init_values=config.layerscale_init,
        ffn_layer="swiglufused" if config.ffn == "swiglu" else "mlp", block_chunks=0,
        num_register_tokens=config.num_register_tokens, interpolate_antialias=config.interpolate_antialias,
        interpolate_offset=config.interpolate_offset,
        block_fn=functools.partial(vits.Block, attn_class=vits.MemEffAttention))
    return model, config
