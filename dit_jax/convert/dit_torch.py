"""PyTorch DiT weights <-> our params, both ways, plus diffusers' DiTTransformer2DModel import.

State dicts here are plain `{name: numpy array}` mappings (NCHW / (out, in) PyTorch layouts), so
the mapping itself needs no PyTorch; `dit_jax.convert.torch_io` reads and writes `.pt` files.
Our params are the unscanned tree (`blocks_{i}`); `dit_jax.models.params.stack_blocks` /
`unstack_blocks` move between that and the `scan_blocks=True` layout.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from dit_jax.convert.tree_paths import get_path, set_path
from dit_jax.models.dit import SIZES, DiTConfig, abstract_params
from dit_jax.models.layers import sincos_2d_pos_embed
from dit_jax.convert.layouts import conv_from_torch, conv_to_torch, linear_from_torch
from dit_jax.models.params import check_config_matches, check_fields, config_name, stack_blocks, unstack_blocks

Array = np.ndarray


def _linear(w: Array) -> Array:
    return np.ascontiguousarray(linear_from_torch(w))


# Each entry: (torch suffix, our sub-path, torch->ours, ours->torch); shapes need the config.
def _block_entries(cfg: DiTConfig):
    d, n = cfg.hidden_size, cfg.num_heads
    h = d // n
    return [
        ("attn.qkv.weight", ("attn", "qkv", "kernel"), lambda w: w.T.reshape(d, 3, n, h), lambda k: k.reshape(d, 3 * d).T),
        ("attn.qkv.bias", ("attn", "qkv", "bias"), lambda b: b.reshape(3, n, h), lambda b: b.reshape(3 * d)),
        ("attn.proj.weight", ("attn", "proj", "kernel"), lambda w: w.T.reshape(n, h, d), lambda k: k.reshape(d, d).T),
        ("attn.proj.bias", ("attn", "proj", "bias"), None, None),
        ("mlp.fc1.weight", ("mlp", "fc1", "kernel"), _linear, _linear),
        ("mlp.fc1.bias", ("mlp", "fc1", "bias"), None, None),
        ("mlp.fc2.weight", ("mlp", "fc2", "kernel"), _linear, _linear),
        ("mlp.fc2.bias", ("mlp", "fc2", "bias"), None, None),
        ("adaLN_modulation.1.weight", ("adaLN", "kernel"), _linear, _linear),
        ("adaLN_modulation.1.bias", ("adaLN", "bias"), None, None),
    ]


def _top_entries(cfg: DiTConfig):
    return [
        ("x_embedder.proj.weight", ("x_embedder", "kernel"), conv_from_torch, conv_to_torch),
        ("x_embedder.proj.bias", ("x_embedder", "bias"), None, None),
        ("t_embedder.mlp.0.weight", ("t_embedder", "mlp_0", "kernel"), _linear, _linear),
        ("t_embedder.mlp.0.bias", ("t_embedder", "mlp_0", "bias"), None, None),
        ("t_embedder.mlp.2.weight", ("t_embedder", "mlp_2", "kernel"), _linear, _linear),
        ("t_embedder.mlp.2.bias", ("t_embedder", "mlp_2", "bias"), None, None),
        ("y_embedder.embedding_table.weight", ("y_embedder", "embedding_table"), None, None),
        ("final_layer.adaLN_modulation.1.weight", ("final_adaLN", "kernel"), _linear, _linear),
        ("final_layer.adaLN_modulation.1.bias", ("final_adaLN", "bias"), None, None),
        ("final_layer.linear.weight", ("final_linear", "kernel"), _linear, _linear),
        ("final_layer.linear.bias", ("final_linear", "bias"), None, None),
    ]


def _all_entries(cfg: DiTConfig):
    for torch_name, path, fwd, bwd in _top_entries(cfg):
        yield torch_name, path, fwd, bwd
    for i in range(cfg.depth):
        for suffix, path, fwd, bwd in _block_entries(cfg):
            yield f"blocks.{i}.{suffix}", (f"blocks_{i}",) + path, fwd, bwd


def _heads_for(hidden: int, given: DiTConfig | None, num_heads: int | None) -> int:
    """Heads cannot be read off the weights: from the config, the caller, or the named sizes."""
    if given is not None:
        return given.num_heads
    if num_heads is not None:
        return num_heads
    for _, h, n in SIZES.values():
        if h == hidden:
            return n
    raise ValueError(f"cannot infer the number of heads of a checkpoint with hidden size {hidden} (not a named "
                     "DiT size): pass num_heads (--num-heads) or a config (--model)")


def _need(sd: Mapping[str, Array], name: str, hint: str) -> Array:
    if name not in sd:
        raise KeyError(f"{name!r} not in the state dict: {hint}")
    return sd[name]


def infer_config(sd: Mapping[str, Array], config: DiTConfig | None = None,
                 num_heads: int | None = None) -> DiTConfig:
    """The model config of an official-format state dict, checked against `config` if given."""
    hint = "this is not an official DiT state dict (for diffusers weights use from_diffusers)"
    w = _need(sd, "x_embedder.proj.weight", hint)
    hidden, in_ch, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = len({m.group(1) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if "pos_embed" in sd:
        tokens = int(sd["pos_embed"].shape[1])
    elif config is not None:
        tokens = config.num_tokens
    else:
        raise KeyError("'pos_embed' missing and no config given: cannot infer the input size")
    grid = int(round(tokens ** 0.5))
    rows = int(_need(sd, "y_embedder.embedding_table.weight", hint).shape[0])
    out = int(_need(sd, "final_layer.linear.weight", hint).shape[0]) // (p * p)
    fc1 = _need(sd, "blocks.0.mlp.fc1.weight", hint)
    dropout = config.class_dropout_prob if config is not None else 0.1
    found = dict(input_size=grid * p, patch_size=p, in_channels=in_ch, hidden_size=hidden, depth=depth,
                 mlp_ratio=fc1.shape[0] / hidden, num_classes=rows - int(dropout > 0), learn_sigma=out == 2 * in_ch)
    if config is not None:  # before the heads, taken from `config`, which may not even divide another size's width
        check_fields(found, config)
    inferred = DiTConfig(**found, num_heads=_heads_for(hidden, config, num_heads), class_dropout_prob=dropout)
    return check_config_matches(inferred, config)


def _check_shapes(params: dict, cfg: DiTConfig) -> None:
    import jax
    expected = abstract_params(DiTConfig(**{**cfg.to_dict(), "scan_blocks": False}))
    got = jax.tree.map(lambda a: tuple(a.shape), params)
    want = jax.tree.map(lambda a: tuple(a.shape), expected)
    if got != want:
        bad = [f"{'/'.join(str(getattr(k, 'key', k)) for k in kp)}: {v}"
               for kp, v in jax.tree_util.tree_flatten_with_path(got)[0]][:3]
        raise ValueError(f"converted parameters do not match {config_name(cfg)}'s shapes (first entries: {bad})")


def _converted(name: str, arr: Array, fwd, cfg: DiTConfig) -> Array:
    """One tensor in our layout; a shape the layout cannot take is an error naming the tensor."""
    try:
        return fwd(arr) if fwd else arr
    except ValueError as e:  # numpy: "cannot reshape array of size 2976 into shape (32,3,2,16)"
        raise ValueError(f"tensor {name!r} has shape {tuple(arr.shape)}, which does not fit {config_name(cfg)} "
                         f"({e}); is the checkpoint damaged, or of another model (--model)?") from None


def from_torch(sd: Mapping[str, Array], config: DiTConfig | None = None,
               num_heads: int | None = None) -> tuple[dict, DiTConfig]:
    """Official state dict -> (params, config). Unknown or missing names are errors.

    The arrays are copies: a live `model.state_dict()` shares memory with the module, and an
    in-place update of the torch model must not reach the converted params.
    """
    sd = {k: np.asarray(v).copy() for k, v in sd.items()}
    cfg = infer_config(sd, config, num_heads)
    params: dict = {}
    used = {"pos_embed"}
    for name, path, fwd, _ in _all_entries(cfg):
        arr = _need(sd, name, f"the checkpoint is incomplete for {config_name(cfg)}")
        set_path(params, path, np.asarray(_converted(name, arr, fwd, cfg), dtype=np.float32))
        used.add(name)
    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"unexpected names in the state dict (first: {unused[:5]}); is it a DiT checkpoint "
                         f"with {cfg.depth} blocks?")
    if "pos_embed" in sd:
        expect = sincos_2d_pos_embed(cfg.hidden_size, cfg.input_size // cfg.patch_size)
        if sd["pos_embed"].size != expect.size or not np.allclose(sd["pos_embed"].reshape(expect.shape), expect,
                                                                   atol=1e-5):
            raise ValueError("the checkpoint's pos_embed is not the fixed 2D sin-cos table this model uses")
    _check_shapes(params, cfg)
    return (stack_blocks(params, cfg.depth) if cfg.scan_blocks else params), cfg


def to_torch(params: Mapping, config: DiTConfig) -> dict[str, Array]:
    """Our params -> official state dict (numpy), including the fixed pos_embed buffer."""
    if "blocks" in params:
        params = unstack_blocks(params, config.depth)
    sd = {"pos_embed": sincos_2d_pos_embed(config.hidden_size, config.input_size // config.patch_size)[None]}
    for name, path, _, bwd in _all_entries(config):
        arr = np.asarray(get_path(params, path), dtype=np.float32)
        sd[name] = np.ascontiguousarray(bwd(arr) if bwd else arr)
    return sd


# -- diffusers' DiTTransformer2DModel ------------------------------------------------------------
def diffusers_to_official(sd: Mapping[str, Array], check_copies: bool = True) -> dict[str, Array]:
    """Rename a diffusers DiT state dict to the official names.

    diffusers keeps a copy of the timestep/label embedders in every block and feeds the final
    adaLN from block 0's copy; we take block 0's (and, with check_copies, insist they agree).
    Its q, k, v projections are fused into the official qkv.
    """
    sd = {k: np.asarray(v) for k, v in sd.items()}
    if "pos_embed.proj.weight" not in sd:
        raise KeyError("'pos_embed.proj.weight' not in the state dict: not a diffusers DiTTransformer2DModel")
    depth = len({m.group(1) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    emb = "transformer_blocks.{i}.norm1.emb."
    out = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
        "final_layer.linear.weight": sd["proj_out_2.weight"], "final_layer.linear.bias": sd["proj_out_2.bias"],
    }
    shared = {"t_embedder.mlp.0": "timestep_embedder.linear_1", "t_embedder.mlp.2": "timestep_embedder.linear_2"}
    for ours, theirs in shared.items():
        for leaf in ("weight", "bias"):
            out[f"{ours}.{leaf}"] = sd[emb.format(i=0) + f"{theirs}.{leaf}"]
    out["y_embedder.embedding_table.weight"] = sd[emb.format(i=0) + "class_embedder.embedding_table.weight"]
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        if check_copies and i > 0:
            for key in [k for k in sd if k.startswith(emb.format(i=0))]:
                other = key.replace(emb.format(i=0), emb.format(i=i))
                if not np.array_equal(sd[key], sd[other]):
                    raise ValueError(f"diffusers block {i}'s embedder copy differs from block 0's ({other}): "
                                     "these weights were not converted from an official DiT, whose blocks share "
                                     "one timestep/label embedder, so the DiT architecture cannot hold them")
        for leaf in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate(
                [sd[f"{b}attn1.to_{x}.{leaf}"] for x in "qkv"], axis=0)
            out[f"blocks.{i}.attn.proj.{leaf}"] = sd[f"{b}attn1.to_out.0.{leaf}"]
            out[f"blocks.{i}.mlp.fc1.{leaf}"] = sd[f"{b}ff.net.0.proj.{leaf}"]
            out[f"blocks.{i}.mlp.fc2.{leaf}"] = sd[f"{b}ff.net.2.{leaf}"]
            out[f"blocks.{i}.adaLN_modulation.1.{leaf}"] = sd[f"{b}norm1.linear.{leaf}"]
    return out


def from_diffusers(sd: Mapping[str, Array], config: DiTConfig | None = None,
                   sample_size: int | None = None, num_heads: int | None = None) -> tuple[dict, DiTConfig]:
    """diffusers DiTTransformer2DModel state dict -> (params, config).

    diffusers state dicts hold no position table, so the latent size comes from `config` or
    `sample_size` (the diffusers config's sample_size, 32 for 256 px).
    """
    official = diffusers_to_official(sd)
    if config is None:
        if sample_size is None:
            raise ValueError("a diffusers state dict has no pos_embed: give config= or sample_size=")
        p = official["x_embedder.proj.weight"].shape[2]
        official["pos_embed"] = sincos_2d_pos_embed(official["x_embedder.proj.weight"].shape[0],
                                                    sample_size // p)[None]
    return from_torch(official, config, num_heads)
