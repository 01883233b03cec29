"""FD_DINOv2 exactly as EDM2's `calculate_metrics.py` computes it (NVlabs/edm2, `DINOv2Detector`).

    features = dinov2_vitl14(normalise(resize_224(uint8 images)))     # the hub model's output
    FD_DINOv2 = Frechet distance between Gaussians fitted to the features of the samples and of the
                reference images

What EDM2 does, step by step:
* detector: torch.hub's `dinov2_vitl14` (ViT-L/14, no registers), whose `forward` is the identity head on
  `x_norm_clstoken`: the features are the final-norm CLS token, 1024-d. At 224 px the 37x37 position
  table is interpolated to 16x16 (bicubic, scale factor 16.1/37, no antialias: the plain model's path);
* resize to 224x224, `resize_mode`:
  - "torch" (EDM2's default): `F.interpolate(x.float(), (224, 224), mode="bicubic", antialias=True)` on
    the 0..255 values, not clamped or rounded afterwards;
  - "pil" (dgm-eval's original): `PIL.Image.resize((224, 224), BICUBIC)` of each uint8 image (PIL's own
    fixed-point arithmetic, rounded and clipped to uint8); this mode runs PIL itself on the host;
* `x / 255`, minus ImageNet mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225), float32;
* statistics in float64 accumulated as EDM2 does: mu = sum(f) / n, sigma = (sum(f f^T) - n mu mu^T) / (n - 1);
* distance: ||mu1 - mu2||^2 + tr(s1 + s2 - 2 sqrtm(s1 s2)) (`dit_jax.metrics.frechet.frechet_distance`;
  EDM2 takes scipy's sqrtm as it comes; frechet.py also retries with 1e-6 on the diagonals when the
  product is singular, which only happens with fewer images than features, 1024).

Weights: the official `dinov2_vitl14_pretrain.pth` (see `dit_jax.convert.dinov2_torch.load_dinov2`).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.exit_codes import BadInput
from dit_jax.metrics.frechet import frechet_distance
from dit_jax.models.dinov2 import DinoV2, DinoV2Config
from dit_jax.models.torch_resize import bicubic_matrix, resize_hw

DETECTOR = "dinov2-vit-l"
FEATURE_DIM = 1024
SIZE = 224
RESIZE_MODES = ("torch", "pil")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# keys of precomputed statistics in a reference .npz (beside the ADM batch's arr_0, mu, sigma, ...)
MU_KEY, SIGMA_KEY = "fd_dinov2_mu", "fd_dinov2_sigma"


def load_detector(path: str):
    """(params, config) of the ViT-L/14 detector from the official .pth; BadInput when it is not given."""
    from dit_jax.convert.dinov2_torch import load_dinov2, weight_url
    if not path:
        raise BadInput("FD_DINOv2 needs the DINOv2 ViT-L/14 weights: download "
                       f"{weight_url(DETECTOR)} and pass its path with --dinov2 PATH")
    return load_dinov2(path, DETECTOR)


def pil_resize(images: np.ndarray) -> np.ndarray:
    """EDM2's resize_mode 'pil': PIL bicubic of each uint8 RGB image to 224x224 (uint8 out)."""
    import PIL.Image
    return np.stack([np.asarray(PIL.Image.fromarray(im, "RGB").resize((SIZE, SIZE), PIL.Image.Resampling.BICUBIC))
                     for im in images])


def normalise(x: jax.Array) -> jax.Array:
    """0..255 float32 NHWC -> x / 255, ImageNet mean and std, in EDM2's order of float32 operations."""
    x = x.astype(jnp.float32) / 255
    x = x - jnp.asarray(IMAGENET_MEAN, jnp.float32)
    return x / jnp.asarray(IMAGENET_STD, jnp.float32)


@functools.lru_cache(maxsize=8)
def _torch_resize_matrices(h: int, w: int):
    return bicubic_matrix(h, SIZE, antialias=True), bicubic_matrix(w, SIZE, antialias=True)


def preprocess(images, resize_mode: str = "torch") -> jax.Array:
    """uint8 NHWC images (any size) -> the detector's normalised float32 224x224 input."""
    if resize_mode not in RESIZE_MODES:
        raise BadInput(f"FD_DINOv2 resize mode {resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise BadInput(f"FD_DINOv2 takes uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
    if resize_mode == "pil":
        return normalise(jnp.asarray(pil_resize(images)))
    mh, mw = _torch_resize_matrices(images.shape[1], images.shape[2])
    return normalise(resize_hw(jnp.asarray(images, jnp.float32), mh, mw))


@functools.lru_cache(maxsize=8)
def _program(config: DinoV2Config, hw: tuple[int, int], resize_mode: str):
    """One jitted program: uint8 batch (already PIL-resized in 'pil' mode) -> resize -> normalise -> the
    detector's CLS features."""
    model = DinoV2(config)
    mats = _torch_resize_matrices(*hw) if resize_mode == "torch" else None

    def run(params, images):
        x = images.astype(jnp.float32)
        x = resize_hw(x, *mats) if mats is not None else x
        return model.apply({"params": params}, normalise(x))["x_norm_clstoken"]
    return jax.jit(run)


def dinov2_features(params, images, config: DinoV2Config, *, resize_mode: str = "torch",
                    batch_size: int = 64) -> np.ndarray:
    """The detector's features (N, D) float32 of uint8 NHWC `images`; the last batch is padded so that
    one compiled program serves every batch."""
    images = np.asarray(images)
    preprocess(images[:1], resize_mode)   # checks the mode and the images
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        pad = batch_size - len(chunk) if len(images) > batch_size else 0
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        if resize_mode == "pil":
            chunk = pil_resize(chunk)
        feats = np.asarray(_program(config, chunk.shape[1:3], resize_mode)(params, chunk))
        out.append(feats[:len(feats) - pad])
    return np.concatenate(out) if out else np.zeros((0, config.embed_dim), np.float32)


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64 with EDM2's accumulation: sum and sum of outer products, then
    sigma = (sum(f f^T) - n mu mu^T) / (n - 1)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise BadInput(f"FD_DINOv2 needs at least 2 feature vectors (N, D), got shape {f.shape}")
    n = len(f)
    mu = f.sum(0) / n
    sigma = (f.T @ f - np.outer(mu, mu) * n) / (n - 1)
    return mu, sigma


def fd_dinov2(stats, ref_stats) -> float:
    """The Frechet distance between (mu, sigma) pairs."""
    return frechet_distance(stats[0], stats[1], ref_stats[0], ref_stats[1])


# What an EDM2 statistics pickle (calculate_metrics.py `ref`: a dict of dicts of numpy arrays) may
# reference; anything else in the pickle is refused rather than run.
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                   ("numpy._core.multiarray", "scalar")}


def load_edm2_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of 'fd_dinov2' from EDM2's reference statistics .pkl (e.g. its dataset-refs/img512.pkl),
    read with an unpickler that accepts numpy arrays only."""
    import pickle

    class NumpyOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _PICKLE_GLOBALS:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a statistics file")

    from dit_jax import storage
    try:
        with storage.resolve(path).open("rb") as f:
            stats = NumpyOnly(f).load()
        fd = stats["fd_dinov2"]
        return np.asarray(fd["mu"], np.float64), np.asarray(fd["sigma"], np.float64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise BadInput(f"{path}: not EDM2 reference statistics with fd_dinov2 mu and sigma ({str(e)[:160]}): pass "
                       "a file written by calculate_metrics.py ref, or an .npz reference batch") from None


def reference_statistics(path: str, params, config: DinoV2Config, *, resize_mode: str = "torch",
                         batch_size: int = 64, images=None):
    """(mu, sigma) of the reference: an EDM2 statistics .pkl; an .npz with precomputed fd_dinov2_mu /
    fd_dinov2_sigma (see `save_statistics`); else computed from the .npz's arr_0 images (or `images`)."""
    from dit_jax import storage
    if str(path).endswith(".pkl"):
        return load_edm2_statistics(path)
    with storage.resolve(path).open("rb") as f:
        data = np.load(f)
        if MU_KEY in data.files and SIGMA_KEY in data.files:
            return np.asarray(data[MU_KEY], np.float64), np.asarray(data[SIGMA_KEY], np.float64)
        if images is None:
            if "arr_0" not in data.files:
                raise BadInput(f"{path}: neither {MU_KEY}/{SIGMA_KEY} nor arr_0 images for FD_DINOv2's reference "
                               "statistics: pass an ADM reference batch (arr_0) or a file written by "
                               "save_statistics")
            images = data["arr_0"]
    return statistics(dinov2_features(params, images, config, resize_mode=resize_mode, batch_size=batch_size))


def save_statistics(path: str, mu, sigma, **extra) -> None:
    """Write reference statistics as an .npz that `reference_statistics` reads back."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    np.savez(path, **{MU_KEY: np.asarray(mu, np.float64), SIGMA_KEY: np.asarray(sigma, np.float64)}, **extra)


class FDDinov2Evaluator:
    """FD_DINOv2 of samples during training, for the registry of training evaluators (kind 'fd_dinov2').

    Reads from its config section: `reference` (an ADM reference batch .npz with arr_0, or statistics
    written by `save_statistics`), `dinov2` (dinov2_vitl14_pretrain.pth or its folder), `dinov2_resize`
    ('torch' or 'pil') and `batch_size`. The detector and the reference statistics are loaded once, at
    the first score."""

    kind = "fd_dinov2"

    def __init__(self, section):
        self.section = section
        self._detector = None
        self._reference = None

    @staticmethod
    def check(section, where: str, files: bool = True) -> list[str]:
        """Config problems of the section (empty when fine); `files`: also that the named files exist."""
        problems = []
        if not (section.get("reference") and section.get("dinov2")):
            problems.append(f"{where}: kind 'fd_dinov2' needs {where}.reference (an ADM reference batch .npz or "
                            f"saved FD_DINOv2 statistics) and {where}.dinov2 (dinov2_vitl14_pretrain.pth)")
        if section.get("dinov2_resize", "torch") not in RESIZE_MODES:
            problems.append(f"{where}.dinov2_resize must be one of {RESIZE_MODES}, got {section.dinov2_resize!r}")
        if files:
            for key in ("reference", "dinov2"):
                if section.get(key) and not os.path.exists(section[key]):
                    problems.append(f"{where}.{key}: no file at {section[key]!r}")
        return problems

    def score(self, images, labels=None) -> dict[str, float]:
        """{'fd_dinov2', 'num_samples'} of images in [-1, 1] (N, H, W, 3; one channel is repeated)."""
        from dit_jax.sampling.grids import to_uint8
        s = self.section
        mode, batch = s.get("dinov2_resize", "torch"), int(s.get("batch_size", 64))
        if self._detector is None:
            self._detector = load_detector(s.dinov2)
            self._reference = reference_statistics(s.reference, *self._detector, resize_mode=mode, batch_size=batch)
        rgb = to_uint8(images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1))
        params, config = self._detector
        stats = statistics(dinov2_features(params, rgb, config, resize_mode=mode, batch_size=batch))
        return {"fd_dinov2": fd_dinov2(stats, self._reference), "num_samples": len(rgb)}

    @staticmethod
    def describe(scores: dict, prefix: str = "") -> str:
        return f"FD_DINOv2 {scores[prefix + 'fd_dinov2']:.2f}"
