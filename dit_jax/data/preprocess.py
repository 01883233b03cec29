"""Per-image preprocessing of the reference's ImageNet training: ADM center crop, random flip, [-1, 1].

The reference (DiT's train.py) composes `center_crop_arr` (from ADM / guided-diffusion),
`RandomHorizontalFlip`, `ToTensor` and `Normalize(0.5, 0.5)`; these are the same steps on numpy
arrays in NHWC, with the flip drawn from an explicit numpy Generator so that a seeded pipeline is
deterministic.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_MODES = {1: "L", 3: "RGB"}


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> uint8 (H, W, channels).

    Converted by PIL rather than taken as stored: ImageNet holds grayscale and CMYK JPEGs among the RGB ones.
    """
    with Image.open(io.BytesIO(data)) as image:
        return to_channels(np.asarray(image.convert(_MODES[channels])), channels)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> (H, W, channels): grayscale is repeated to RGB, RGB converted to L by PIL."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == channels:
        return image
    if image.shape[-1] == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    return to_channels(np.asarray(_to_pil(image).convert(_MODES[channels])), channels)


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def adm_center_crop(image: np.ndarray, image_size: int) -> np.ndarray:
    """ADM's `center_crop_arr` on a uint8 (H, W, C) array -> (image_size, image_size, C).

    BOX-halve while the short side is at least twice the target (cheap and alias-free), BICUBIC-resize the
    short side to the target (this also upscales images smaller than the target), then center crop.
    """
    channels = image.shape[-1]
    pil = _to_pil(image)
    while min(*pil.size) >= 2 * image_size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
    scale = image_size / min(*pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
    arr = np.asarray(pil).reshape(pil.size[1], pil.size[0], channels)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip with probability 1/2, drawn from `rng` (one draw per image, flipped or not)."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 in [0, 255] -> float32 in [-1, 1]: ToTensor then Normalize(0.5, 0.5) is x / 127.5 - 1."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


# to_float of every uint8 value: the device converts by looking pixels up here, not by arithmetic,
# because XLA turns the division by 127.5 into a multiply that is 1 ulp off on some values.
PIXEL_VALUES = to_float(np.arange(256, dtype=np.uint8))


def to_float_on_device(images):
    """uint8 pixels on the device (a jax.Array) -> float32 in [-1, 1], bit-identical to to_float."""
    import jax.numpy as jnp
    return jnp.asarray(PIXEL_VALUES)[images.astype(jnp.int32)]
