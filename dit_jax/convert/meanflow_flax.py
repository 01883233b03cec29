"""The official MeanFlow checkpoints (Gsunshine/meanflow, Flax) -> our params and DiTConfig.

The official network (`models/models_dit.py`, the module "net" inside `MeanFlow`) is a DiT without
learned sigma, with a second timestep embedder `h_embedder`; its Flax parameter tree nests each
linear layer as `<name>/_flax_linear/{kernel, bias}` (kernels already (in, out)), the blocks as
`blocks/layers_<i>`, the adaLN linears as `adaLN_modulation/layers_1`, the timestep MLPs as
`mlp/layers_0` and `mlp/layers_2`, the label table as `embedding_table/_flax_embedding/embedding`
(always num_classes + 1 rows) and the patch conv as `x_embedder/proj` (HWIO kernel, our layout).
The flat qkv / proj kernels get our (embed, 3, heads, head_dim) / (heads, head_dim, embed) shapes.

The checkpoint stores neither the input size (the position table is computed) nor the head count:
input_size defaults to 32 (256 px latents) and the heads follow the official size table.

    dit-jax convert --from-meanflow CKPT_DIR --out WEIGHTS_DIR [--key model] [--sample-size 32]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from dit_jax.exit_codes import BadInput
from dit_jax.models.dit import DiTConfig

# hidden size -> heads of the official DiT_{S,B,M,L,XL}_* configs.
HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}


def _linear(tree: Mapping, *path: str) -> dict:
    node = tree
    for key in path:
        node = node[key]
    node = node["_flax_linear"]
    return {"kernel": np.asarray(node["kernel"]), "bias": np.asarray(node["bias"])}


def _embedder(tree: Mapping) -> dict:
    return {"mlp_0": _linear(tree, "mlp", "layers_0"), "mlp_2": _linear(tree, "mlp", "layers_2")}


def _block(tree: Mapping, heads: int) -> dict:
    qkv, proj = _linear(tree, "attn", "qkv"), _linear(tree, "attn", "proj")
    d = qkv["kernel"].shape[0]
    hd = d // heads
    return {
        "adaLN": _linear(tree, "adaLN_modulation", "layers_1"),
        "attn": {"qkv": {"kernel": qkv["kernel"].reshape(d, 3, heads, hd), "bias": qkv["bias"].reshape(3, heads, hd)},
                 "proj": {"kernel": proj["kernel"].reshape(heads, hd, d), "bias": proj["bias"]}},
        "mlp": {"fc1": _linear(tree, "mlp", "fc1"), "fc2": _linear(tree, "mlp", "fc2")},
    }


def network_tree(tree: Mapping, ema: bool = True) -> Mapping:
    """The network's subtree of a checkpoint: accepts a TrainState dict (its 'ema_params' with `ema`, as
    the official FID is of the EMA weights, else 'params'), a {'net': ...} params tree, or the net's own."""
    for key in (("ema_params",) if ema else ()) + ("params", "net"):
        if key in tree:
            return network_tree(tree[key], ema)
    if "x_embedder" not in tree:
        raise BadInput(f"not an official MeanFlow parameter tree: top-level keys {sorted(tree)[:8]} "
                       "(expected 'net', 'params' or 'ema_params', holding 'x_embedder', 'blocks', ...)")
    return tree


def config_from_official(net: Mapping, input_size: int = 32, num_heads: int | None = None) -> DiTConfig:
    """The DiTConfig of an official network tree (depth, width, patch, channels, classes from shapes)."""
    kernel = np.shape(net["x_embedder"]["proj"]["kernel"])  # (p, p, C, D)
    p, channels, d = kernel[0], kernel[2], kernel[3]
    heads = num_heads or HEADS.get(d)
    if heads is None:
        raise BadInput(f"hidden size {d} is not one of the official sizes {sorted(HEADS)}: give num_heads")
    table = np.shape(net["y_embedder"]["embedding_table"]["_flax_embedding"]["embedding"])
    # The official table always has the null row; class_dropout_prob > 0 gives ours the same row
    # (its value is unused by MeanFlow, which drops classes itself).
    return DiTConfig(input_size=input_size, patch_size=p, in_channels=channels, hidden_size=d,
                     depth=len(net["blocks"]), num_heads=heads, num_classes=table[0] - 1, class_dropout_prob=0.1,
                     learn_sigma=False, second_time_input=True)


def convert(tree: Mapping, input_size: int = 32, num_heads: int | None = None,
            ema: bool = True) -> tuple[dict, DiTConfig]:
    """(our unscanned params, their DiTConfig) from an official checkpoint tree (see `network_tree`)."""
    net = network_tree(tree, ema)
    config = config_from_official(net, input_size, num_heads)
    out_ch = np.shape(net["final_layer"]["linear"]["_flax_linear"]["kernel"])[1] // config.patch_size ** 2
    if out_ch != config.in_channels:
        raise BadInput(f"the final layer gives {out_ch} channels for {config.in_channels} in: not a MeanFlow DiT")
    params = {
        "x_embedder": {"kernel": np.asarray(net["x_embedder"]["proj"]["kernel"]),
                       "bias": np.asarray(net["x_embedder"]["proj"]["bias"])},
        "t_embedder": _embedder(net["t_embedder"]),
        "h_embedder": _embedder(net["h_embedder"]),
        "y_embedder": {"embedding_table": np.asarray(net["y_embedder"]["embedding_table"]["_flax_embedding"]["embedding"])},
        "final_adaLN": _linear(net["final_layer"], "adaLN_modulation", "layers_1"),
        "final_linear": _linear(net["final_layer"], "linear"),
    }
    for i in range(config.depth):
        params[f"blocks_{i}"] = _block(net["blocks"][f"layers_{i}"], config.num_heads)
    return params, config


def load_checkpoint(path: str) -> Mapping:
    """An official checkpoint directory (flax.training.checkpoints, as its save_checkpoint wrote it) as a dict."""
    from flax.training import checkpoints
    tree = checkpoints.restore_checkpoint(path, target=None)
    if tree is None:
        raise BadInput(f"{path}: no flax checkpoint found (give the directory the official code saved into)")
    return tree
