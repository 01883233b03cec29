"""Classifier-free guidance for the transport, as SiT's `forward_with_cfg` applies it.

SiT's network is the DiT with learn_sigma=True whose forward drops the second (variance) half of
the output channels; guidance then mixes the first `channels` channels of what is left (3, as DiT,
or all of them), whatever the network predicts (velocity, score or noise). The mixing itself is
the diffusion package's `apply_guidance`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dit_jax.diffusion.ancestral import apply_guidance
from dit_jax.diffusion.ancestral import forward_with_cfg as _doubled_forward_with_cfg

ClassModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def split_learned_sigma(out: jax.Array, channels: int) -> jax.Array:
    """The first `channels` output channels (channels-last): SiT's `x, _ = x.chunk(2, dim=1)` when the
    network returns 2 * channels, and the output unchanged when it already has `channels`."""
    if out.shape[-1] not in (channels, 2 * channels):
        raise ValueError(f"network output has {out.shape[-1]} channels; expected {channels} or {2 * channels}")
    return out[..., :channels]


def sit_model_fn(class_model_fn: ClassModelFn, channels: int) -> ClassModelFn:
    """SiT's `forward(x, t, y)`: the network with its learned-sigma half dropped."""
    return lambda x, t, y: split_learned_sigma(class_model_fn(x, t, y), channels)


def guided_model_fn(class_model_fn: ClassModelFn, labels: jax.Array, null_class: int, scale: float,
                    channels: int, out_channels: int | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A guided `model_fn(x, t)` on B rows for the samplers and `velocity_fn`.

    Runs the network once on [x; x] with labels [y; null_class], keeps `out_channels` (default: x's
    channel count) of its output, guides the first `channels` of them and returns the conditional
    half: the first half of SiT's forward_with_cfg on the doubled batch, which is what SiT keeps.
    """
    def model_fn(x, t):
        c = x.shape[-1] if out_channels is None else out_channels
        out = class_model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                             jnp.concatenate([labels, jnp.full_like(labels, null_class)]))
        return apply_guidance(split_learned_sigma(out, c), scale, channels)[: x.shape[0]]
    return model_fn


def forward_with_cfg(class_model_fn: ClassModelFn, scale: float, channels: int = 3,
                     out_channels: int | None = None) -> ClassModelFn:
    """SiT's `forward_with_cfg(x, t, y, cfg_scale)` on the doubled batch of 2B rows, both halves returned."""
    def split(x, t, y):
        out = class_model_fn(x, t, y)
        return split_learned_sigma(out, x.shape[-1] if out_channels is None else out_channels)
    return _doubled_forward_with_cfg(split, scale, channels)
