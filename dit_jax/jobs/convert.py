"""`dit-jax convert`: official PyTorch / diffusers checkpoints <-> dit-jax weights directories."""

from __future__ import annotations

import json


def weights_to_torch(weights_dir: str, out: str, config) -> str:
    """A dit-jax weights directory -> the official .pt state dict; returns the model's name."""
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.params import config_name
    from dit_jax.weights import load_weights
    params, config = load_weights(weights_dir, config)
    torch_io.save_state_dict(dit_torch.to_torch(params, config), out)
    return config_name(config)


def vae_from_diffusers(source: str, out: str, force: bool) -> str:
    """sd-vae-ft-ema / -mse (a folder or its weights file) -> a VAE weights directory; returns its path."""
    from dit_jax.convert.vae_torch import config_beside, load_diffusers_vae
    from dit_jax.weights import save_vae_weights
    vae_config = config_beside(source)
    return save_vae_weights(out, load_diffusers_vae(source, vae_config), vae_config, force=force)


def dit_from_torch(out: str, config, *, torch_file: str = "", key: str = "ema", diffusers: str = "", repa_file: str = "",
                   sample_size: int | None = None, num_heads: int | None = None, force: bool = False) -> list[str]:
    """An official .pt (or a diffusers DiT) -> a weights directory; returns the lines to print."""
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.params import config_name
    from dit_jax.weights import save_weights
    from dit_jax.exit_codes import BadInput
    try:
        if torch_file:
            params, config = dit_torch.from_torch(torch_io.load_state_dict(torch_file, key), config, num_heads)
        elif repa_file:
            from dit_jax.convert.repa_torch import from_repa_torch
            params, config, _ = from_repa_torch(torch_io.load_state_dict(repa_file, key), config, num_heads)
        else:
            sd = torch_io.load_diffusers_state_dict(diffusers)
            params, config = dit_torch.from_diffusers(sd, config, sample_size, num_heads)
    except (ValueError, KeyError) as e:  # what the state dict holds does not convert: say which file
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        source = torch_file or repa_file or diffusers
        raise BadInput(text if source in text else f"{source}: {text}") from None
    path = save_weights(out, params, config, force=force)
    return [f"wrote {config_name(config)} weights to {path}", json.dumps(config.architecture())]
