"""Inception-v3 in the FID variant (the ADM evaluator's network), NHWC, pure Flax Linen.

This is the 2015-12-05 Inception graph that TTUR, the ADM evaluator (guided-diffusion
`evaluations/evaluator.py`) and pytorch-fid (`InceptionV3(use_fid_inception=True)`) use: torchvision's
Inception-v3 layout with the FID patches

* Mixed_5b/5c/5d (InceptionA), Mixed_6b..6e (InceptionC) and Mixed_7b (InceptionE) average-pool their
  pool branch with `count_include_pad=False` (TensorFlow's average pool ignores the padding);
* Mixed_7c (the second InceptionE) max-pools its pool branch;
* every conv is conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU;
* the classifier has 1008 classes.

    model = FIDInceptionV3()
    variables = load_fid_inception("pt_inception-2015-12-05-6726825d.pth")   # dit_jax.convert.inception_torch
    out = model.apply(variables, images)    # images (N, H, W, 3), uint8 or float in 0..255

`out` is a dict of float32 arrays:

* 'pool'    (N, 2048): the global average pool after Mixed_7c (TF `pool_3:0`), for FID, IS, P/R;
* 'spatial' (N, 17, 17, 7): the first 7 channels of TF `mixed_6/conv:0`, for sFID. `mixed_N` counts the
  graph's mixed blocks from 0 (mixed = Mixed_5b ... mixed_3 = Mixed_6a, mixed_4..mixed_7 = Mixed_6b..6e),
  so `mixed_6` is Mixed_6d and its `conv` is the 1x1 branch (`Mixed_6d.branch1x1`, 192 channels after
  its ReLU). Mixed_6d concatenates that branch first, so these are also the first 7 channels of Mixed_6d's
  output. Flattened in (h, w, c) order, as the evaluator reshapes its NHWC tensor, it is 2023-d;
* 'logits'  (N, 1008): `pool @ W` of the final fc WITHOUT its bias, the logits of the evaluator's
  Inception score (it multiplies `pool_3` by the weight of `softmax/logits/MatMul` only).

Input preprocessing (`preprocess`):

* "pytorch_fid" (default): bilinear resize to 299x299 exactly as `F.interpolate(mode="bilinear",
  align_corners=False)` (half-pixel centres, no antialiasing, edges clamped), then `x / 127.5 - 1`
  (pytorch-fid's `2 * (x / 255) - 1`). Matches pytorch-fid's `InceptionV3(resize_input=True,
  normalize_input=True)` on `images / 255`.
* "tf1": what the TF graph itself does after its `ExpandDims` input, which the ADM evaluator feeds: TF 1.x
  `ResizeBilinear` (align_corners=False, no half-pixel centres: source = dst * in / out) to 299x299,
  then `(x - 128) / 128`. This is the ADM evaluator's own preprocessing; pytorch-fid differs from it by
  the two details above (a known source of ~0.1 FID-sized differences).

Both resizes are the identity for 299x299 inputs. The resize is two small matrix products (exact
interpolation weights computed in numpy), so no antialiasing can sneak in on downsampling.
`dtype` is the compute dtype (float32 default; bfloat16 is faster on accelerators and less exact);
parameters stay float32, outputs are float32. With float32 compute, convolutions and matmuls run at
`lax.Precision.HIGHEST` unless `precision` says otherwise (so a GPU does not silently use TF32).
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008
SPATIAL_CHANNELS = 7
SPATIAL_SHAPE = (17, 17, SPATIAL_CHANNELS)
BN_EPS = 1e-3
PREPROCESS = ("pytorch_fid", "tf1")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# ------------------------------------------------------------------------------------ architecture
# One entry per conv (each is conv -> BN -> ReLU): (torch module path, in channels, out channels,
# kernel (kh, kw), stride, padding (ph, pw)). The converter derives every name and shape from this.

def _a(name, cin, pool):
    return [(f"{name}.branch1x1", cin, 64, (1, 1), 1, (0, 0)),
            (f"{name}.branch5x5_1", cin, 48, (1, 1), 1, (0, 0)),
            (f"{name}.branch5x5_2", 48, 64, (5, 5), 1, (2, 2)),
            (f"{name}.branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)),
            (f"{name}.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
            (f"{name}.branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1)),
            (f"{name}.branch_pool", cin, pool, (1, 1), 1, (0, 0))]


def _b(name, cin):
    return [(f"{name}.branch3x3", cin, 384, (3, 3), 2, (0, 0)),
            (f"{name}.branch3x3dbl_1", cin, 64, (1, 1), 1, (0, 0)),
            (f"{name}.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
            (f"{name}.branch3x3dbl_3", 96, 96, (3, 3), 2, (0, 0))]


def _c(name, cin, c7):
    return [(f"{name}.branch1x1", cin, 192, (1, 1), 1, (0, 0)),
            (f"{name}.branch7x7_1", cin, c7, (1, 1), 1, (0, 0)),
            (f"{name}.branch7x7_2", c7, c7, (1, 7), 1, (0, 3)),
            (f"{name}.branch7x7_3", c7, 192, (7, 1), 1, (3, 0)),
            (f"{name}.branch7x7dbl_1", cin, c7, (1, 1), 1, (0, 0)),
            (f"{name}.branch7x7dbl_2", c7, c7, (7, 1), 1, (3, 0)),
            (f"{name}.branch7x7dbl_3", c7, c7, (1, 7), 1, (0, 3)),
            (f"{name}.branch7x7dbl_4", c7, c7, (7, 1), 1, (3, 0)),
            (f"{name}.branch7x7dbl_5", c7, 192, (1, 7), 1, (0, 3)),
            (f"{name}.branch_pool", cin, 192, (1, 1), 1, (0, 0))]


def _d(name, cin):
    return [(f"{name}.branch3x3_1", cin, 192, (1, 1), 1, (0, 0)),
            (f"{name}.branch3x3_2", 192, 320, (3, 3), 2, (0, 0)),
            (f"{name}.branch7x7x3_1", cin, 192, (1, 1), 1, (0, 0)),
            (f"{name}.branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
            (f"{name}.branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)),
            (f"{name}.branch7x7x3_4", 192, 192, (3, 3), 2, (0, 0))]


def _e(name, cin):
    return [(f"{name}.branch1x1", cin, 320, (1, 1), 1, (0, 0)),
            (f"{name}.branch3x3_1", cin, 384, (1, 1), 1, (0, 0)),
            (f"{name}.branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)),
            (f"{name}.branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
            (f"{name}.branch3x3dbl_1", cin, 448, (1, 1), 1, (0, 0)),
            (f"{name}.branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1)),
            (f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)),
            (f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)),
            (f"{name}.branch_pool", cin, 192, (1, 1), 1, (0, 0))]


CONV_SPECS = tuple(
    [("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0)),
     ("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0)),
     ("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)),
     ("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0)),
     ("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0))]
    + _a("Mixed_5b", 192, 32) + _a("Mixed_5c", 256, 64) + _a("Mixed_5d", 288, 64)
    + _b("Mixed_6a", 288)
    + _c("Mixed_6b", 768, 128) + _c("Mixed_6c", 768, 160) + _c("Mixed_6d", 768, 160) + _c("Mixed_6e", 768, 192)
    + _d("Mixed_7a", 768)
    + _e("Mixed_7b", 1280) + _e("Mixed_7c", 2048))
_SPEC = {path: spec for path, *spec in CONV_SPECS}


# -------------------------------------------------------------------------------------- resizing

def resize_matrix(in_size: int, out_size: int, mode: str = "pytorch_fid") -> np.ndarray:
    """(out_size, in_size) float32 bilinear interpolation weights along one axis.

    "pytorch_fid": PyTorch's bilinear, align_corners=False: src = max(scale * (dst + 0.5) - 0.5, 0),
    scale = in / out, neighbours floor(src) and floor(src) + 1 clamped to the last pixel (no
    antialiasing). "tf1": TF 1.x ResizeBilinear, align_corners=False: src = dst * scale, neighbours
    floor(src) and ceil(src) clamped. Positions are computed in float32 like both libraries do.
    """
    if mode not in PREPROCESS:
        raise ValueError(f"mode must be one of {PREPROCESS}, got {mode!r}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    if mode == "pytorch_fid":
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, in_size - 1)
    else:
        src = dst * scale
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    lo = np.minimum(lo, in_size - 1)
    frac = (src - lo.astype(np.float32)).astype(np.float32)
    w = np.zeros((out_size, in_size), np.float32)
    np.add.at(w, (np.arange(out_size), lo), np.float32(1) - frac)
    np.add.at(w, (np.arange(out_size), hi), frac)
    return w


def preprocess_images(images, mode: str = "pytorch_fid", size: int | None = INPUT_SIZE) -> jax.Array:
    """uint8/float images (N, H, W, 3) in 0..255 -> float32 (N, size, size, 3) in about [-1, 1]."""
    if mode not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {mode!r}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {tuple(images.shape)}")
    x = jnp.asarray(images).astype(jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    if size is not None:
        h, w = x.shape[1], x.shape[2]
        if h != size:
            x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(resize_matrix(h, size, mode)), x, precision=hp)
        if w != size:
            x = jnp.einsum("pw,nowc->nopc", jnp.asarray(resize_matrix(w, size, mode)), x, precision=hp)
    if mode == "pytorch_fid":
        return x / 127.5 - 1.0
    return (x - 128.0) / 128.0


# ---------------------------------------------------------------------------------------- modules

class BasicConv(nn.Module):
    """conv (no bias) -> BatchNorm with running statistics (eps 1e-3) -> ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, strides=(self.stride, self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                    precision=self.precision, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x):   # 3x3, stride 1, pad 1, padding excluded from the count (TF's average pool)
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x):
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_down(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionBlock(nn.Module):
    """One Mixed block; `kind` is A, B, C, D, E (avg-pool branch) or E_max (max-pool branch)."""

    block: str          # torch name, e.g. "Mixed_6d"
    kind: str
    dtype: Any = jnp.float32
    precision: Any = None

    def _conv(self, branch):
        _, cout, kernel, stride, padding = _SPEC[f"{self.block}.{branch}"]
        return BasicConv(cout, kernel, stride, padding, self.dtype, self.precision, name=branch)

    @nn.compact
    def __call__(self, x):
        c = self._conv
        if self.kind == "A":
            b1 = c("branch1x1")(x)
            b5 = c("branch5x5_2")(c("branch5x5_1")(x))
            b3 = c("branch3x3dbl_3")(c("branch3x3dbl_2")(c("branch3x3dbl_1")(x)))
            bp = c("branch_pool")(_avg_pool_same(x))
            return jnp.concatenate([b1, b5, b3, bp], axis=-1)
        if self.kind == "B":
            b3 = c("branch3x3")(x)
            bd = c("branch3x3dbl_3")(c("branch3x3dbl_2")(c("branch3x3dbl_1")(x)))
            return jnp.concatenate([b3, bd, _max_pool_down(x).astype(b3.dtype)], axis=-1)
        if self.kind == "C":
            b1 = c("branch1x1")(x)
            b7 = c("branch7x7_3")(c("branch7x7_2")(c("branch7x7_1")(x)))
            bd = x
            for i in range(1, 6):
                bd = c(f"branch7x7dbl_{i}")(bd)
            bp = c("branch_pool")(_avg_pool_same(x))
            return jnp.concatenate([b1, b7, bd, bp], axis=-1)
        if self.kind == "D":
            b3 = c("branch3x3_2")(c("branch3x3_1")(x))
            b7 = x
            for i in range(1, 5):
                b7 = c(f"branch7x7x3_{i}")(b7)
            return jnp.concatenate([b3, b7, _max_pool_down(x).astype(b3.dtype)], axis=-1)
        if self.kind in ("E", "E_max"):
            b1 = c("branch1x1")(x)
            t = c("branch3x3_1")(x)
            b3 = jnp.concatenate([c("branch3x3_2a")(t), c("branch3x3_2b")(t)], axis=-1)
            t = c("branch3x3dbl_2")(c("branch3x3dbl_1")(x))
            bd = jnp.concatenate([c("branch3x3dbl_3a")(t), c("branch3x3dbl_3b")(t)], axis=-1)
            pooled = _avg_pool_same(x) if self.kind == "E" else _max_pool_same(x)
            bp = c("branch_pool")(pooled)
            return jnp.concatenate([b1, b3, bd, bp], axis=-1)
        raise ValueError(f"unknown block kind {self.kind!r}")


BLOCKS = (("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"),
          ("Mixed_6b", "C"), ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"),
          ("Mixed_7a", "D"), ("Mixed_7b", "E"), ("Mixed_7c", "E_max"))
SPATIAL_BLOCK = "Mixed_6d"      # TF mixed_6; its branch1x1 is TF mixed_6/conv


class UnbiasedLogits(nn.Module):
    """The final fc (2048 -> 1008). Holds the bias (so a checkpoint maps one to one) but returns
    `x @ kernel` only, as the ADM evaluator's Inception score does."""

    precision: Any = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (POOL_DIM, NUM_LOGITS), jnp.float32)
        self.param("bias", nn.initializers.zeros, (NUM_LOGITS,), jnp.float32)
        return jnp.dot(x.astype(jnp.float32), kernel, precision=self.precision)


class FIDInceptionV3(nn.Module):
    """FID Inception-v3: images (N, H, W, 3) in 0..255 -> {'pool', 'spatial', 'logits'} (float32).

    resize_input=False feeds the images at their own size (at least 75x75; 'spatial' is then not
    17x17 unless the input is 299x299) after the same normalisation.
    """

    dtype: Any = jnp.float32
    preprocess: str = "pytorch_fid"
    resize_input: bool = True
    precision: Any = None

    @nn.compact
    def __call__(self, images):
        dtype = DTYPES[self.dtype] if isinstance(self.dtype, str) else self.dtype
        precision = self.precision
        if precision is None and jnp.dtype(dtype) == jnp.float32:
            precision = jax.lax.Precision.HIGHEST
        x = preprocess_images(images, self.preprocess, INPUT_SIZE if self.resize_input else None)
        if min(x.shape[1], x.shape[2]) < 75:
            raise ValueError(f"Inception needs inputs of at least 75x75, got {x.shape[1]}x{x.shape[2]}")
        x = x.astype(dtype)

        def stem(name):
            _, cout, kernel, stride, padding = _SPEC[name]
            return BasicConv(cout, kernel, stride, padding, dtype, precision, name=name)

        x = stem("Conv2d_1a_3x3")(x)
        x = stem("Conv2d_2a_3x3")(x)
        x = stem("Conv2d_2b_3x3")(x)
        x = _max_pool_down(x)
        x = stem("Conv2d_3b_1x1")(x)
        x = stem("Conv2d_4a_3x3")(x)
        x = _max_pool_down(x)
        spatial = None
        for name, kind in BLOCKS:
            x = InceptionBlock(name, kind, dtype, precision, name=name)(x)
            if name == SPATIAL_BLOCK:
                spatial = x[..., :SPATIAL_CHANNELS]    # = branch1x1[..., :7] (concatenated first)
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = UnbiasedLogits(precision, name="fc")(pool)
        return {"pool": pool, "spatial": spatial.astype(jnp.float32), "logits": logits}


# ------------------------------------------------------------------------------------------ helpers

def init_variables(seed: int = 0) -> dict:
    """Random {'params', 'batch_stats'} of the right structure (for tests and shapes): He-normal conv
    kernels, unit BN scale, zero biases/means, unit variances. Built in numpy: jitting `model.init`
    of this network took about 95 s on a 2-core CPU."""
    rs = np.random.RandomState(seed)
    shapes = abstract_variables()

    def make(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rs.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(make, shapes)


def abstract_variables(model: FIDInceptionV3 | None = None) -> dict:
    """Shapes/dtypes of the variables without computing them."""
    model = model or FIDInceptionV3()
    return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.uint8))


@functools.lru_cache(maxsize=16)
def _jitted_apply(model: FIDInceptionV3):
    return jax.jit(model.apply)


def _batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def extract_features(variables, images, batch_size: int = 100, model: FIDInceptionV3 | None = None,
                     outputs: tuple[str, ...] = ("pool", "spatial", "logits")) -> dict[str, np.ndarray]:
    """Run the network over a numpy array of images in fixed-size batches (the last one padded, so
    one compilation serves all) and return numpy float32 arrays; 'spatial' is flattened to
    (N, 2023) in (h, w, c) order as the ADM evaluator does."""
    model = model or FIDInceptionV3()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    fn = _jitted_apply(model)
    n = images.shape[0]
    bs = min(batch_size, n) if n else batch_size
    chunks: dict[str, list] = {k: [] for k in outputs}
    for start, end in _batches(n, bs):
        batch = images[start:end]
        if batch.shape[0] < bs:
            pad = np.zeros((bs - batch.shape[0],) + batch.shape[1:], batch.dtype)
            batch = np.concatenate([batch, pad])
        out = fn(variables, batch)
        for k in outputs:
            v = np.asarray(out[k])[: end - start]
            chunks[k].append(v.reshape(v.shape[0], -1) if k == "spatial" else v)
    return {k: (np.concatenate(v) if v else np.zeros((0,), np.float32)) for k, v in chunks.items()}
