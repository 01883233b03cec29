"""The digits demo's quality metric: the Frechet distance against direct statements, the digits
classifier (held-out accuracy, cache), and the two scores on real digits, noise and blank images.

Measured (CPU, this version of the classifier; printed with `pytest -s`):
  held-out accuracy 0.989 (359 digits); about 1 s to train plus ~3-5 s of one-off compilation.
  real held-out digits, true labels:   class_accuracy 0.989, frechet_distance ~1.5
  real held-out digits, shuffled:      class_accuracy ~0.08, frechet_distance ~1.5 (same images)
  uniform noise in [-1, 1] (359):      class_accuracy ~0.09, frechet_distance ~300
  all-zero images (359):               class_accuracy ~0.10, frechet_distance ~533
The thresholds below (accuracy >= 0.95 / <= 0.3, distance <= 15 / >= 100) sit between these with margin.
"""

import json
import os
from unittest import mock

import numpy as np
import pytest

from dit_jax.metrics import digits_classifier as dc
from dit_jax.metrics.digits_classifier import load_classifier, real_digits, score_samples
from dit_jax.metrics.frechet import feature_statistics, frechet_distance

SMALL_FD = 15.0      # real held-out digits measure ~1.5
LARGE_FD = 100.0     # noise ~300, zeros ~533
MEASURED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    if MEASURED:   # shown with `pytest -s`
        print("\ndigits metric, measured:")
        for name, value in MEASURED.items():
            print(f"  {name:<40} {value}")


# ---------------------------------------------------------------------------------- frechet

def _sqrt_psd(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _direct_fd(mu1, s1, mu2, s2):
    """tr sqrt(s1 s2) = tr sqrt(s1^1/2 s2 s1^1/2), a symmetric PSD matrix: eigenvalues, no sqrtm."""
    r1 = _sqrt_psd(s1)
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)))
    d = mu1 - mu2
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_covmean


def _random_gaussian(rng, f, n=None):
    a = rng.normal(size=(f, f))
    return rng.normal(size=f), a @ a.T / f + 0.1 * np.eye(f)


@pytest.mark.parametrize("f", [1, 8, 64])
def test_frechet_matches_direct_statement(f):
    rng = np.random.default_rng(f)
    mu1, s1 = _random_gaussian(rng, f)
    mu2, s2 = _random_gaussian(rng, f)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, _direct_fd(mu1, s1, mu2, s2), rtol=1e-8)
    np.testing.assert_allclose(frechet_distance(mu2, s2, mu1, s1), got, rtol=1e-8)   # symmetric
    assert got > 0


def test_frechet_diagonal_closed_form_and_float32_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 2, 16), rng.uniform(0.1, 2, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), want, rtol=1e-10)
    got32 = frechet_distance(*(x.astype(np.float32) for x in (mu1, np.diag(a), mu2, np.diag(b))))
    np.testing.assert_allclose(got32, want, rtol=1e-6)


def test_frechet_identical_statistics_is_zero():
    rng = np.random.default_rng(1)
    mu, s = _random_gaussian(rng, 32)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8
    mu, s = feature_statistics(rng.normal(size=(500, 32)))
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8


def test_frechet_singular_covariance_retries_with_eps():
    # A feature with no variance (a dead unit) makes the product singular: scipy flags it, and the
    # distance is taken again with eps on both diagonals, with a warning, as pytorch-fid / ADM do.
    rng = np.random.default_rng(2)
    f, eps = 10, 1e-6
    mu1, s1 = feature_statistics(rng.normal(size=(200, f)))
    mu2, s2 = feature_statistics(rng.normal(size=(200, f)) + 0.5)
    s1[0, :] = s1[:, 0] = 0.0
    with pytest.warns(UserWarning, match="singular"):
        got = frechet_distance(mu1, s1, mu2, s2, eps=eps)
    off = eps * np.eye(f)
    d = mu1 - mu2
    r1 = _sqrt_psd(s1 + off)
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvalsh(r1 @ (s2 + off) @ r1)))
    want = d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_covmean    # traces without the offset, as the references
    assert np.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=1e-7)
    # ... and the retry is what a tiny regularization gives: close to the exact value on the singular stats.
    np.testing.assert_allclose(got, _direct_fd(mu1, s1, mu2, s2), rtol=1e-3)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))


def test_feature_statistics_is_mean_and_unbiased_cov_float64():
    x = np.random.default_rng(3).normal(size=(100, 5)).astype(np.float32)
    mu, s = feature_statistics(x)
    assert mu.dtype == np.float64 and s.dtype == np.float64 and s.shape == (5, 5)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(s, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


# -------------------------------------------------------------------------------- classifier

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("digits_classifier"))


def trainings():
    """Counts the classifier trainings inside a `with` block (the cache tests need to know)."""
    return mock.patch.object(dc, "_train", wraps=dc._train)


@pytest.fixture(scope="module")
def classifier(cache_dir):
    with trainings() as train:
        clf = load_classifier(cache_dir)              # empty cache: trains and writes it
    assert train.call_count == 1 and not clf.loaded_from_cache
    MEASURED["train seconds (incl. compile)"] = round(clf.train_seconds, 2)
    MEASURED["held-out accuracy"] = round(clf.heldout_accuracy, 4)
    return clf


def test_real_digits_convention():
    from sklearn.datasets import load_digits

    x, y = real_digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and y.shape == (1797,)
    assert x.min() == -1.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    u8 = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
    np.testing.assert_array_equal(x[..., 0], u8.astype(np.float32) / np.float32(127.5) - np.float32(1))
    np.testing.assert_allclose(x[..., 0], u8 / 127.5 - 1, rtol=0, atol=1e-7)
    xt, yt = real_digits("train")
    xh, yh = real_digits("heldout")
    assert len(yt) + len(yh) == 1797 and 0.18 < len(yh) / 1797 < 0.22
    assert np.bincount(yh).min() >= 30       # stratified
    # the split is disjoint: no held-out image is a training image
    train_rows = {r.tobytes() for r in xt}
    assert not any(r.tobytes() in train_rows for r in xh)


def test_heldout_accuracy(classifier):
    assert classifier.heldout_accuracy >= 0.95
    xh, yh = real_digits("heldout")
    assert np.mean(classifier.predict(xh) == yh) == pytest.approx(classifier.heldout_accuracy)


def test_features_shapes_and_input_forms(classifier):
    x, _ = real_digits("heldout")
    feats = classifier.features(x[:7])
    assert feats.shape == (7, dc.FEATURE_DIM) and feats.dtype == np.float64
    pred = classifier.predict(x[:7])
    assert pred.shape == (7,) and np.issubdtype(pred.dtype, np.integer)
    np.testing.assert_allclose(classifier.features(x[:7, ..., 0]), feats)          # (N, 8, 8)
    u8 = np.round((x[:7] + 1) * 127.5).astype(np.uint8)
    np.testing.assert_allclose(classifier.features(u8), feats, atol=1e-6)           # uint8 [0, 255]
    outside = x[:7] * 1.2                                                           # clipped to [-1, 1]
    np.testing.assert_allclose(classifier.features(outside), classifier.features(np.clip(outside, -1, 1)))
    mu, sigma = classifier.real_stats
    assert mu.shape == (dc.FEATURE_DIM,) and sigma.shape == (dc.FEATURE_DIM, dc.FEATURE_DIM)


def test_cache_is_reused(classifier, cache_dir):
    params_file = os.path.join(cache_dir, "params.npz")
    mtime = os.stat(params_file).st_mtime_ns
    with trainings() as train:
        again = load_classifier(cache_dir)
    assert train.call_count == 0 and again.loaded_from_cache
    assert os.stat(params_file).st_mtime_ns == mtime
    assert again.heldout_accuracy == classifier.heldout_accuracy
    x, _ = real_digits("heldout")
    np.testing.assert_array_equal(again.features(x), classifier.features(x))
    with open(os.path.join(cache_dir, "meta.json")) as f:
        assert json.load(f)["version"] == dc.VERSION


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DIT_JAX_CACHE_DIR", str(tmp_path))
    assert dc._cache_dir(None) == os.path.join(str(tmp_path), "digits_classifier")
    monkeypatch.delenv("DIT_JAX_CACHE_DIR")
    assert dc._cache_dir(None) == os.path.join(os.path.expanduser("~"), ".cache", "dit_jax", "digits_classifier")
    assert dc._cache_dir(str(tmp_path / "x")) == str(tmp_path / "x")


def test_stale_or_corrupt_cache_is_rejected(classifier, cache_dir, tmp_path):
    import shutil

    assert dc._load_cached(cache_dir) is not None
    assert dc._load_cached(str(tmp_path / "missing")) is None
    for name, damage in [("meta.json", lambda t: t.replace(f'"version": {dc.VERSION}', '"version": -1')),
                         ("meta.json", lambda t: t[: len(t) // 2]),
                         ("params.npz", None)]:
        d = tmp_path / f"case{len(os.listdir(tmp_path))}"
        shutil.copytree(cache_dir, d)
        if damage is None:
            (d / name).write_bytes((d / name).read_bytes()[:100])
        else:
            (d / name).write_text(damage((d / name).read_text()))
        assert dc._load_cached(str(d)) is None, name


def test_corrupt_cache_retrains(classifier, tmp_path):
    d = tmp_path / "corrupt"
    d.mkdir()
    (d / "params.npz").write_bytes(b"not an npz")
    (d / "meta.json").write_text(json.dumps({"version": dc.VERSION, "heldout_accuracy": 1.0}))
    with trainings() as train:
        clf = load_classifier(str(d))
        assert train.call_count == 1 and not clf.loaded_from_cache
        assert clf.heldout_accuracy == pytest.approx(classifier.heldout_accuracy)   # deterministic training
        again = load_classifier(str(d))                                            # the rewritten cache loads
        assert train.call_count == 1 and again.loaded_from_cache


# ------------------------------------------------------------------------------------ scores

def test_score_real_heldout_digits(classifier):
    x, y = real_digits("heldout")
    s = score_samples(x, y, classifier)
    MEASURED["real held-out: accuracy, FD"] = (round(s["class_accuracy"], 4), round(s["frechet_distance"], 2))
    assert s["num_samples"] == len(y)
    assert s["class_accuracy"] >= 0.95
    assert 0 <= s["frechet_distance"] <= SMALL_FD


def test_score_uniform_noise(classifier):
    _, y = real_digits("heldout")
    noise = np.random.default_rng(0).uniform(-1, 1, size=(len(y), 8, 8, 1)).astype(np.float32)
    s = score_samples(noise, y, classifier)
    MEASURED["uniform noise: accuracy, FD"] = (round(s["class_accuracy"], 4), round(s["frechet_distance"], 2))
    assert s["class_accuracy"] <= 0.3
    assert s["frechet_distance"] >= LARGE_FD


def test_score_all_zero_images(classifier):
    _, y = real_digits("heldout")
    with pytest.warns(UserWarning, match="singular"):    # identical images: a zero covariance
        s = score_samples(np.zeros((len(y), 8, 8, 1), np.float32), y, classifier)
    MEASURED["all zeros: accuracy, FD"] = (round(s["class_accuracy"], 4), round(s["frechet_distance"], 2))
    assert s["class_accuracy"] <= 0.3
    assert s["frechet_distance"] >= LARGE_FD


def test_shuffled_labels_low_accuracy_small_distance(classifier):
    # The two scores measure different things: right images for the wrong classes.
    x, y = real_digits("heldout")
    shuffled = np.random.default_rng(0).permutation(y)
    s = score_samples(x, shuffled, classifier)
    MEASURED["shuffled labels: accuracy, FD"] = (round(s["class_accuracy"], 4), round(s["frechet_distance"], 2))
    assert s["class_accuracy"] <= 0.3
    assert s["frechet_distance"] <= SMALL_FD
    assert s["frechet_distance"] == pytest.approx(score_samples(x, y, classifier)["frechet_distance"])


def test_score_rejects_mismatched_labels(classifier):
    x, y = real_digits("heldout")
    with pytest.raises(ValueError):
        score_samples(x[:10], y[:9], classifier)
