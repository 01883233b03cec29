"""`dit-jax convert`: official PyTorch / diffusers checkpoints <-> dit-jax weights directories."""

from __future__ import annotations

import json


def weights_to_torch(weights_dir: str, out: str, config) -> str:
    """A dit-jax weights directory -> the official .pt state dict; returns the model's name."""
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.params import config_name
    from dit_jax.weights import load_weights
    from dit_jax.convert import lightningdit_torch
    from dit_jax.models.dit import LIGHTNING_OPTIONS
    params, config = load_weights(weights_dir, config)
    # A model with LightningDiT's options exports in LightningDiT's format (its names, its RoPE buffers).
    writer = lightningdit_torch if any(getattr(config, k) for k in LIGHTNING_OPTIONS) else dit_torch
    torch_io.save_state_dict(writer.to_torch(params, config), out)
    return config_name(config)


def vae_from_diffusers(source: str, out: str, force: bool) -> str:
    """sd-vae-ft-ema / -mse (a folder or its weights file) -> a VAE weights directory; returns its path."""
    from dit_jax.convert.vae_torch import config_beside, load_diffusers_vae
    from dit_jax.weights import save_vae_weights
    vae_config = config_beside(source)
    return save_vae_weights(out, load_diffusers_vae(source, vae_config), vae_config, force=force)


def dit_from_torch(out: str, config, *, torch_file: str = "", key: str = "ema", diffusers: str = "", repa_file: str = "",
                   lightningdit_file: str = "", meanflow_dir: str = "",
                   sample_size: int | None = None, num_heads: int | None = None, force: bool = False) -> list[str]:
    """An official .pt (or a diffusers DiT) -> a weights directory; returns the lines to print."""
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.params import config_name
    from dit_jax.weights import save_weights
    from dit_jax.exit_codes import BadInput
    try:
        if meanflow_dir:
            from dit_jax.convert.meanflow_flax import convert, load_checkpoint
            params, config = convert(load_checkpoint(meanflow_dir), sample_size or 32, num_heads, ema=key == "ema")
        elif torch_file:
            params, config = dit_torch.from_torch(torch_io.load_state_dict(torch_file, key), config, num_heads)
        elif lightningdit_file:
            params, config = _from_lightningdit(torch_io.load_state_dict(lightningdit_file, key), config, num_heads)
        elif repa_file:
            from dit_jax.convert.repa_torch import from_repa_torch
            params, config, _ = from_repa_torch(torch_io.load_state_dict(repa_file, key), config, num_heads)
        else:
            sd = torch_io.load_diffusers_state_dict(diffusers)
            params, config = dit_torch.from_diffusers(sd, config, sample_size, num_heads)
    except (ValueError, KeyError) as e:  # what the state dict holds does not convert: say which file
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        source = meanflow_dir or torch_file or lightningdit_file or repa_file or diffusers
        raise BadInput(text if source in text else f"{source}: {text}") from None
    path = save_weights(out, params, config, force=force)
    return [f"wrote {config_name(config)} weights to {path}", json.dumps(config.architecture())]


def _from_lightningdit(state_dict: dict, config, num_heads):
    """A hustvl/LightningDiT state dict -> (params, config): --model names the size, the options are the
    checkpoint's (read off its parameter names)."""
    import dataclasses

    from dit_jax.convert import lightningdit_torch
    from dit_jax.models.dit import LIGHTNING_OPTIONS
    if config is not None:
        found = lightningdit_torch.infer_config(state_dict, num_heads=config.num_heads)
        config = dataclasses.replace(config, **{k: getattr(found, k) for k in LIGHTNING_OPTIONS})
    return lightningdit_torch.from_torch(state_dict, config, num_heads)
