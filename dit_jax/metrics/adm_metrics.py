"""The ADM evaluator's metrics (guided-diffusion `evaluations/evaluator.py`) on Inception features.

Features come from `dit_jax.models.inception.FIDInceptionV3`: 'pool' (N, 2048), 'spatial'
(N, 17, 17, 7) flattened in (h, w, c) order to (N, 2023), 'logits' (N, 1008, no fc bias).

* FID / sFID: the Frechet distance (`dit_jax.metrics.frechet`) between the mean and unbiased
  covariance of pool / spatial features, or against precomputed (mu, sigma) such as the reference
  batch's `mu`, `sigma` / `mu_s`, `sigma_s`. All float64 (the evaluator keeps its means in float32).
* Inception score: softmax over the 1008 logits, consecutive chunks of `split_size` = 5,000 samples
  (the evaluator splits by size, not by count: 50,000 samples give 10 splits, and a final partial chunk
  is a split of its own); per chunk exp(mean_i KL(p_i || mean_j p_j)); the mean over chunks. float64
  with a log-softmax (the evaluator's float32 log of a softmax can give nan where a probability underflows).
* Precision / recall (the evaluator's ManifoldEstimator, from Kynkaanniemi et al.): distances are
  SQUARED Euclidean, `max(|u|^2 - 2 u.v + |v|^2, 0)`; each point's radius is the (k+1)-th smallest
  squared distance to its own set, self included (so the k-th neighbour besides itself), k = 3; no
  radius clamping (`clamp_to_percentile=None`; its `eps` only enters the realism score, not P/R).
  precision = fraction of samples within (<=) the radius of at least one reference point; recall =
  fraction of reference points within the radius of at least one sample. Distances are computed in
  blocks of `batch` x `batch` (10,000). The evaluator computes each block in float16 (features cast to
  half) and redoes a block in float32 only if a half result is not finite; `distance_dtype="float16"`
  (the default) emulates that (half inputs, products and sums rounded to half after each operation,
  float32 fallback); "float32" and "float64" compute exactly in those precisions.
* Reference batches (`VIRTUAL_imagenet256_labeled.npz` layout): `arr_0` uint8 (N, H, W, 3) reference
  images for precision/recall, `mu` (2048,), `sigma` (2048, 2048), `mu_s` (2023,), `sigma_s`
  (2023, 2023) over the whole reference set; other keys (e.g. `arr_1` labels) are ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile
import zlib

import numpy as np
from scipy.special import logsumexp

from dit_jax.metrics.frechet import feature_statistics, frechet_distance

POOL_DIM = 2048
SPATIAL_DIM = 17 * 17 * 7
NUM_LOGITS = 1008
IS_SPLIT_SIZE = 5000
PR_K = 3
PR_BATCH = 10000
REFERENCE_KEYS = ("arr_0", "mu", "sigma", "mu_s", "sigma_s")
DISTANCE_DTYPES = ("float16", "float32", "float64")


# ------------------------------------------------------------------------------------- FID, sFID

@dataclasses.dataclass(frozen=True)
class Stats:
    """Mean (F,) and unbiased covariance (F, F) of features, float64."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, features) -> "Stats":
        return cls(*feature_statistics(features))


def _flatten(features, name: str) -> np.ndarray:
    a = np.asarray(features)
    if a.ndim < 2:
        raise ValueError(f"{name} must be (N, F) or (N, ...) features, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def _as_stats(x, dim: int | None, name: str) -> Stats:
    if isinstance(x, Stats):
        stats = x
    elif isinstance(x, tuple) and len(x) == 2:
        stats = Stats(np.asarray(x[0], np.float64), np.asarray(x[1], np.float64))
    else:
        stats = Stats.of(_flatten(x, name))
    dim = stats.mu.shape[0] if dim is None and stats.mu.ndim == 1 else dim
    if stats.mu.shape != (dim,) or stats.sigma.shape != (dim, dim):
        raise ValueError(f"{name}: expected {dim}-d features or statistics, got mu {stats.mu.shape}, "
                         f"sigma {stats.sigma.shape}")
    return stats


def fid(a, b, dim: int | None = POOL_DIM) -> float:
    """FID between two sets of pool features (N, 2048), or either as Stats / a (mu, sigma) pair.
    `dim` guards against mixing pool and spatial features; None accepts any (equal) size."""
    sa = _as_stats(a, dim, "first argument")
    sb = _as_stats(b, sa.mu.shape[0] if dim is None else dim, "second argument")
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FID from precomputed means and covariances (e.g. a reference batch's mu, sigma)."""
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def sfid(a, b) -> float:
    """sFID: FID on spatial features, (N, 17, 17, 7) or flattened (N, 2023), or Stats / (mu_s, sigma_s)."""
    return fid(a, b, dim=SPATIAL_DIM)


# --------------------------------------------------------------------------------- Inception score

def _log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - logsumexp(logits, axis=1, keepdims=True)


def inception_score(logits, split_size: int = IS_SPLIT_SIZE) -> float:
    """The evaluator's Inception score from the (N, 1008) unbiased logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must be (N, classes) with N >= 1, got shape {logits.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be positive, got {split_size}")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain non-finite values")
    scores = []
    for start in range(0, logits.shape[0], split_size):
        logp = _log_softmax(logits[start:start + split_size])
        p = np.exp(logp)
        log_marginal = logsumexp(logp, axis=0, keepdims=True) - np.log(logp.shape[0])   # log mean_j p_j
        kl = np.sum(p * (logp - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- precision / recall

def _half(a) -> np.ndarray:
    """Round to float16 and hold the result in float64 (exact) for the next operation."""
    return np.asarray(a).astype(np.float16).astype(np.float64)


def pairwise_sq_distances(u, v, dtype: str = "float16") -> np.ndarray:
    """Squared Euclidean distances (len(u), len(v)) as the evaluator computes them, as float32
    (float64 for dtype="float64"): max(|u|^2 - 2 u.v + |v|^2, 0)."""
    if dtype not in DISTANCE_DTYPES:
        raise ValueError(f"distance dtype must be one of {DISTANCE_DTYPES}, got {dtype!r}")
    if dtype == "float64":
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        nu, nv = (u * u).sum(1), (v * v).sum(1)
        return np.maximum(nu[:, None] - 2.0 * (u @ v.T) + nv[None, :], 0.0)
    if dtype == "float16":
        with np.errstate(over="ignore", invalid="ignore"):
            u16 = np.asarray(u, np.float32).astype(np.float16).astype(np.float32)
            v16 = np.asarray(v, np.float32).astype(np.float16).astype(np.float32)
            nu = _half(_half(u16.astype(np.float64) ** 2).sum(1))   # half squares, wide sum, half result
            nv = _half(_half(v16.astype(np.float64) ** 2).sum(1))
            dots = _half(u16 @ v16.T)                               # half inputs, float32 accumulation
            d = _half(_half(nu[:, None] - _half(2.0 * dots)) + nv[None, :])
            d = np.maximum(d, 0.0)
        if np.isfinite(d).all():
            return d.astype(np.float32)
        # the evaluator's fallback: the same block in float32
    u32, v32 = np.asarray(u, np.float32), np.asarray(v, np.float32)
    nu, nv = (u32 * u32).sum(1), (v32 * v32).sum(1)
    return np.maximum(nu[:, None] - np.float32(2) * (u32 @ v32.T) + nv[None, :], np.float32(0))


def manifold_radii(features, k: int = PR_K, batch: int = PR_BATCH, distance_dtype: str = "float16",
                   clamp_to_percentile: float | None = None) -> np.ndarray:
    """Squared radius of each point: its (k+1)-th smallest squared distance within `features`
    (self included). With clamp_to_percentile, radii above that percentile are set to 0."""
    features = _flatten(features, "features")
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} points, got {k}")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    out_dtype = np.float64 if distance_dtype == "float64" else np.float32
    radii = np.zeros(n, out_dtype)
    for r0 in range(0, n, batch):
        rows = features[r0:r0 + batch]
        best = None      # the k+1 smallest distances so far, per row
        for c0 in range(0, n, batch):
            d = pairwise_sq_distances(rows, features[c0:c0 + batch], distance_dtype)
            cand = d if best is None else np.concatenate([best, d], axis=1)
            m = min(k + 1, cand.shape[1])
            best = np.partition(cand, m - 1, axis=1)[:, :m] if cand.shape[1] > m else cand
        radii[r0:r0 + rows.shape[0]] = np.partition(best, k, axis=1)[:, k]
    if clamp_to_percentile is not None:
        radii[radii > np.percentile(radii, clamp_to_percentile)] = 0
    return radii


def precision_recall(ref_pool, sample_pool, k: int = PR_K, batch: int = PR_BATCH,
                     distance_dtype: str = "float16",
                     clamp_to_percentile: float | None = None) -> tuple[float, float]:
    """(precision, recall) of samples against reference features, as the evaluator computes them."""
    ref, sample = _flatten(ref_pool, "ref_pool"), _flatten(sample_pool, "sample_pool")
    if ref.shape[1] != sample.shape[1]:
        raise ValueError(f"feature sizes differ: reference {ref.shape[1]}, samples {sample.shape[1]}")
    if distance_dtype not in DISTANCE_DTYPES:
        raise ValueError(f"distance_dtype must be one of {DISTANCE_DTYPES}, got {distance_dtype!r}")
    ref_radii = manifold_radii(ref, k, batch, distance_dtype, clamp_to_percentile)
    sample_radii = manifold_radii(sample, k, batch, distance_dtype, clamp_to_percentile)
    ref_in = np.zeros(ref.shape[0], bool)         # reference point inside the sample manifold
    sample_in = np.zeros(sample.shape[0], bool)   # sample inside the reference manifold
    for r0 in range(0, ref.shape[0], batch):
        for s0 in range(0, sample.shape[0], batch):
            d = pairwise_sq_distances(ref[r0:r0 + batch], sample[s0:s0 + batch], distance_dtype)
            ref_in[r0:r0 + batch] |= (d <= sample_radii[None, s0:s0 + batch]).any(axis=1)
            sample_in[s0:s0 + batch] |= (d <= ref_radii[r0:r0 + batch, None]).any(axis=0)
    return float(sample_in.mean()), float(ref_in.mean())


# ------------------------------------------------------------------------------- all of them

def evaluate_features(sample: dict, ref_pool, ref_stats: Stats | tuple, ref_stats_spatial: Stats | tuple,
                      split_size: int = IS_SPLIT_SIZE, pr_k: int = PR_K, pr_batch: int = PR_BATCH,
                      distance_dtype: str = "float16") -> dict[str, float]:
    """The evaluator's report from sample features {'pool', 'spatial', 'logits'} against a reference
    (pool features of its `arr_0` images and its pool / spatial statistics)."""
    missing = [k for k in ("pool", "spatial", "logits") if k not in sample]
    if missing:
        raise KeyError(f"sample features lack {missing}")
    precision, recall = precision_recall(ref_pool, sample["pool"], pr_k, pr_batch, distance_dtype)
    return {"inception_score": inception_score(sample["logits"], split_size),
            "fid": fid(sample["pool"], ref_stats),
            "sfid": sfid(sample["spatial"], ref_stats_spatial),
            "precision": precision,
            "recall": recall}


# ---------------------------------------------------------------------------- reference batches

@dataclasses.dataclass
class ReferenceBatch:
    images: np.ndarray          # uint8 (N, H, W, 3)
    stats: Stats                # pool statistics (mu, sigma)
    stats_spatial: Stats        # spatial statistics (mu_s, sigma_s)


def _check_images(images, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 images, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be (N, H, W, 3) images, got shape {images.shape}")
    return images


def _check_stat(value, shape: tuple, name: str, path: str) -> np.ndarray:
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"{path}: {name!r} must be floating point, got dtype {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{path}: {name!r} has shape {value.shape}, expected {shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"{path}: {name!r} contains non-finite values")
    return value.astype(np.float64)


def _read_npz(path: str, keys, what: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """(names in the .npz at `path`, the arrays among `keys` that it holds); a ValueError naming the file
    when it is not an .npz archive or cannot be read whole (truncated, damaged)."""
    try:
        npz = np.load(path)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}); {what}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single array (.npy data), not an .npz archive; {what}")
    with npz:
        try:
            return list(npz.files), {k: npz[k] for k in keys if k in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: damaged .npz file ({type(e).__name__}: {e}); {what}") from None


def load_reference_batch(path: str, min_images: int = 10000) -> ReferenceBatch:
    """Read an ADM reference batch (.npz with arr_0, mu, sigma, mu_s, sigma_s), checking every part."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no reference batch at {path!r} (ADM's are e.g. VIRTUAL_imagenet256_labeled.npz "
                                "from openai/guided-diffusion's evaluations README)")
    files, npz = _read_npz(path, REFERENCE_KEYS, "download or write the reference batch again "
                           "(`dit-jax reference-batch`)")
    missing = [k for k in REFERENCE_KEYS if k not in files]
    if missing:
        raise KeyError(f"{path}: reference batch lacks {missing} (has {sorted(files)}; needs {list(REFERENCE_KEYS)})")
    images = _check_images(npz["arr_0"], f"{path}: 'arr_0'")
    if images.shape[0] < max(min_images, PR_K + 1):
        raise ValueError(f"{path}: 'arr_0' holds {images.shape[0]} reference images, fewer than "
                         f"{max(min_images, PR_K + 1)} (pass min_images= to accept a smaller batch)")
    stats = Stats(_check_stat(npz["mu"], (POOL_DIM,), "mu", path),
                  _check_stat(npz["sigma"], (POOL_DIM, POOL_DIM), "sigma", path))
    spatial = Stats(_check_stat(npz["mu_s"], (SPATIAL_DIM,), "mu_s", path),
                    _check_stat(npz["sigma_s"], (SPATIAL_DIM, SPATIAL_DIM), "sigma_s", path))
    return ReferenceBatch(images, stats, spatial)


def load_sample_batch(path: str, key: str = "arr_0") -> np.ndarray:
    """The uint8 (N, H, W, 3) images of a sample .npz as sample_ddp.py writes it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no sample batch at {path!r}")
    files, npz = _read_npz(path, (key,), "sample it again (`dit-jax sample --num-samples N --out FILE.npz`)")
    if key not in files:
        raise KeyError(f"{path}: no {key!r} array (has {sorted(files)})")
    return _check_images(npz[key], f"{path}: {key!r}")


def write_reference_batch(path: str, images, pool, spatial, n_images: int = 10000) -> ReferenceBatch:
    """Write an ADM-layout reference batch: the first `n_images` images as arr_0 (shuffle first if the
    order is not random) and the statistics of ALL the given pool (N, 2048) / spatial (N, 17, 17, 7)
    or (N, 2023) features. Returns what was written."""
    images = _check_images(images, "images")
    if images.shape[0] < n_images:
        raise ValueError(f"need at least n_images={n_images} images, got {images.shape[0]}")
    if n_images < PR_K + 1:
        raise ValueError(f"n_images must be at least {PR_K + 1} for k={PR_K} precision/recall, got {n_images}")
    pool, spatial = _flatten(pool, "pool"), _flatten(spatial, "spatial")
    if pool.shape[1] != POOL_DIM:
        raise ValueError(f"pool features must be (N, {POOL_DIM}), got {pool.shape}")
    if spatial.shape[1] != SPATIAL_DIM:
        raise ValueError(f"spatial features must be (N, 17, 17, 7) or (N, {SPATIAL_DIM}), got {spatial.shape}")
    batch = ReferenceBatch(np.ascontiguousarray(images[:n_images]), Stats.of(pool), Stats.of(spatial))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, arr_0=batch.images, mu=batch.stats.mu, sigma=batch.stats.sigma,
                     mu_s=batch.stats_spatial.mu, sigma_s=batch.stats_spatial.sigma)
        # mkstemp makes the file private (0600); the batch is shared like any file written here.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return batch
