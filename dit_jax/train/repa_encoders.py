"""REPA's frozen encoders, by name: how each is loaded, preprocesses the raw image and gives features.

    dinov2-vit-s/-b/-l/-g (+ "-reg"): DINOv2 ViT-*/14 (dit_jax.models.dinov2), weights from an official
        .pth (config.repa.weights); REPA's preprocessing (x/255, ImageNet mean/std, then bicubic resize to
        224 * (resolution // 256), no antialias); its position table resampled once at load to the token
        grid, as REPA's utils.load_encoders does; features forward_features()["x_norm_patchtokens"].
    digits-mlp: the demo's digit classifier (dit_jax.metrics.digits_classifier), trained on the real
        digits (the role DINOv2 plays for ImageNet): one 64-d feature per image, aligned with every token.

An encoder is frozen: its params are an argument of the train step (beside the VAE's), never trained,
never in the optimizer state or the checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from dit_jax.exit_codes import BadInput

DINOV2_DIMS = {"s": 384, "b": 768, "l": 1024, "g": 1536}


@dataclasses.dataclass(frozen=True)
class FrozenEncoder:
    name: str
    z_dim: int
    needs_weights: bool
    grid: Callable[[int], int]              # resolution -> tokens per side (0: one feature per image)
    problem: Callable[[int], str | None]    # resolution -> why the encoder cannot take it, or None


def _dinov2_grid(resolution: int) -> int:
    return 224 * (resolution // 256) // 14


def _dinov2_problem(resolution: int) -> str | None:
    if resolution % 256:
        return (f"data.image_size {resolution}: REPA resizes the image to 224 * (resolution // 256) px for "
                f"DINOv2's patch 14, which needs a multiple of 256 (REPA trains at 256 or 512)")
    return None


ENCODERS = {f"dinov2-vit-{size}{reg}": FrozenEncoder(f"dinov2-vit-{size}{reg}", dim, True, _dinov2_grid,
                                                       _dinov2_problem)
            for size, dim in DINOV2_DIMS.items() for reg in ("", "-reg")}
ENCODERS["digits-mlp"] = FrozenEncoder("digits-mlp", 64, False, lambda r: 0,
                                       lambda r: None if r == 8 else f"data.image_size {r}: the digits "
                                       "classifier reads 8x8 images")


def _dinov2():
    """The DINOv2 model module (dit_jax.models.dinov2), imported when a DINOv2 encoder is first used."""
    from dit_jax.models import dinov2
    return dinov2


def encoder(name: str) -> FrozenEncoder:
    if name not in ENCODERS:
        raise BadInput(f"config.repa.encoder: unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def load(name: str, weights: str, resolution: int) -> Any:
    """The encoder's params for `resolution` (DINOv2: its position table resampled to the token grid)."""
    if name == "digits-mlp":
        from dit_jax.metrics.digits_classifier import load_classifier
        return load_classifier().params
    if not weights:
        raise BadInput(f"config.repa.weights: {name} needs the official DINOv2 .pth (e.g. "
                       f"dinov2_vit{name.split('-')[2]}14{'_reg4' if name.endswith('-reg') else ''}_pretrain.pth), "
                       "one path per encoder, comma-separated")
    dinov2 = _dinov2()
    from dit_jax.convert.dinov2_torch import load_dinov2
    params, _ = load_dinov2(weights, name)  # (params, config)
    g = _dinov2_grid(resolution)
    return dinov2.resample_pos_embed(params, (g, g))


def random(name: str, resolution: int, key: jax.Array) -> Any:
    """Randomly initialised params of the encoder's architecture (timing and compiling without weights)."""
    if name == "digits-mlp":
        from dit_jax.metrics.digits_classifier import DigitsMLP
        return DigitsMLP().init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    d, g = _dinov2(), _dinov2_grid(resolution)
    return d.resample_pos_embed(d.DinoV2(d.dinov2_config(name)).init(key, jnp.zeros((1, 224, 224, 3)))["params"],
                                (g, g))


def abstract(name: str, resolution: int) -> Any:
    """The params' shapes (compiling without weight files)."""
    return jax.eval_shape(lambda: random(name, resolution, jax.random.key(0)))


def features(name: str, params: Any, images: jax.Array, resolution: int) -> jax.Array:
    """(B, N, z_dim) frozen features of NHWC uint8 `images` (the batch's crop and flip), float32, no gradient."""
    if name == "digits-mlp":
        from dit_jax.metrics.digits_classifier import DigitsMLP
        x = images.astype(jnp.float32) / 127.5 - 1.0   # the classifier's convention (to_float)
        _, feats = DigitsMLP().apply({"params": params}, x, return_features=True)
        z = feats[:, None, :]
    else:
        from dit_jax.models.repa import preprocess_raw_image
        d = _dinov2()
        z = d.DinoV2(d.dinov2_config(name)).apply({"params": params}, preprocess_raw_image(images, resolution))[
            "x_norm_patchtokens"]
    return jax.lax.stop_gradient(z.astype(jnp.float32))
