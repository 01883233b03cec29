"""The ADM evaluator's metrics against direct numpy/scipy statements of their formulas, on small
random features, plus reference-batch I/O and error cases."""

import numpy as np
import pytest
from scipy import linalg, special
from scipy.spatial.distance import cdist

from dit_jax.metrics import adm_metrics as am
from dit_jax.metrics.adm_metrics import (ReferenceBatch, Stats, fid, fid_from_stats, inception_score,
                                          load_reference_batch, load_sample_batch, manifold_radii,
                                          pairwise_sq_distances, precision_recall, sfid, write_reference_batch)
from helpers import FEW_SAMPLE_ABS, few_sample_frechet


# ---------------------------------------------------------------------------------------- FID, sFID

def _direct_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_matches_direct_formula():
    rs = np.random.RandomState(0)
    a = rs.normal(0, 1, (200, 16))
    b = rs.normal(0.3, 1.2, (150, 16)) @ rs.normal(0, 0.5, (16, 16))
    want = _direct_fid(a, b)
    assert want > 1
    assert fid(a, b, dim=None) == pytest.approx(want, rel=1e-9)
    # from precomputed statistics, in any of the accepted forms
    mu, sigma = a.mean(0), np.cov(a, rowvar=False)
    assert fid((mu, sigma), b, dim=None) == pytest.approx(want, rel=1e-9)
    assert fid(b, Stats(mu, sigma), dim=None) == pytest.approx(want, rel=1e-9)
    assert fid_from_stats(mu, sigma, b.mean(0), np.cov(b, rowvar=False)) == pytest.approx(want, rel=1e-9)
    assert fid(a, a, dim=None) == pytest.approx(0.0, abs=1e-6)
    # float32 features give the float64 answer for their values
    assert fid(a.astype(np.float32), b, dim=None) == pytest.approx(
        _direct_fid(a.astype(np.float32).astype(np.float64), b), rel=1e-9)


def test_fid_errors():
    rs = np.random.RandomState(1)
    with pytest.raises(ValueError, match="expected 2048-d"):
        fid(rs.rand(10, 16), rs.rand(10, 16))            # pool FID checks the feature size
    with pytest.raises(ValueError, match="expected 16-d"):
        fid(rs.rand(10, 16), rs.rand(10, 8), dim=None)
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        fid(rs.rand(1, 16), rs.rand(10, 16), dim=None)
    with pytest.raises(ValueError, match="expected 2023-d"):
        sfid(rs.rand(5, 17, 17, 8), rs.rand(5, 17, 17, 8))


def test_sfid_uses_hwc_flattened_spatial_statistics(monkeypatch):
    """sFID is the Frechet distance of the (h, w, c)-flattened 17x17x7 features (the full 2023-d
    square root takes ~30 s on a small CPU, so the distance itself is captured, not computed)."""
    rs = np.random.RandomState(2)
    a, b = rs.rand(6, 17, 17, 7), rs.rand(5, 17, 17, 7)
    seen = {}

    def spy(mu1, sigma1, mu2, sigma2, eps=1e-6):
        seen.update(mu1=mu1, sigma1=sigma1, mu2=mu2, sigma2=sigma2)
        return 1.25

    monkeypatch.setattr(am, "frechet_distance", spy)
    assert sfid(a, b) == 1.25
    flat_a = a.reshape(6, -1)       # NHWC reshape, as the evaluator does
    assert flat_a.shape[1] == 2023 and np.array_equal(flat_a[0, :7], a[0, 0, 0])
    np.testing.assert_allclose(seen["mu1"], flat_a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(seen["sigma1"], np.cov(flat_a, rowvar=False), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(seen["mu2"], b.reshape(5, -1).mean(0), rtol=1e-12)
    # already flattened features and (mu_s, sigma_s) statistics work the same
    assert sfid(flat_a, (seen["mu2"], seen["sigma2"])) == 1.25
    np.testing.assert_allclose(seen["sigma1"], np.cov(flat_a, rowvar=False), rtol=1e-10, atol=1e-14)


# -------------------------------------------------------------------------------- Inception score

def _direct_is(logits, split_size):
    preds = special.softmax(logits.astype(np.float64), axis=1)
    scores = []
    for i in range(0, len(preds), split_size):      # the evaluator's chunks of split_size
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_inception_score_matches_direct_formula():
    rs = np.random.RandomState(3)
    logits = rs.normal(0, 3, (23, 1008))
    for split in (5, 7, 23, 100):
        assert inception_score(logits, split_size=split) == pytest.approx(_direct_is(logits, split), rel=1e-12)
    # 23 samples in chunks of 5 are 5 splits, the last of 3 samples (as the evaluator's range() does)
    parts = [_direct_is(logits[i:i + 5], 5) for i in range(0, 23, 5)]
    assert len(parts) == 5
    assert inception_score(logits, 5) == pytest.approx(np.mean(parts), rel=1e-12)
    # default split size is 5,000: 12,000 samples -> 3 splits of 5000, 5000, 2000
    big = rs.normal(0, 2, (12000, 1008)).astype(np.float32)
    want = np.mean([_direct_is(big[i:i + 5000], 5000) for i in (0, 5000, 10000)])
    assert inception_score(big) == pytest.approx(want, rel=1e-9)


def test_inception_score_limits_and_errors():
    assert inception_score(np.zeros((10, 1008))) == pytest.approx(1.0)
    # confident and evenly spread over 8 classes -> IS = 8
    logits = np.full((80, 1008), -60.0)
    logits[np.arange(80), np.arange(80) % 8] = 60.0
    assert inception_score(logits, split_size=80) == pytest.approx(8.0, rel=1e-6)
    # extreme logits stay finite (a float32 softmax would underflow to 0 and give log(0))
    logits[:, 100] = -1e4
    assert np.isfinite(inception_score(logits, split_size=80))
    with pytest.raises(ValueError, match="logits must be"):
        inception_score(np.zeros(1008))
    with pytest.raises(ValueError, match="split_size"):
        inception_score(np.zeros((4, 1008)), split_size=0)
    with pytest.raises(ValueError, match="non-finite"):
        inception_score(np.full((4, 1008), np.nan))


# ----------------------------------------------------------------------------- precision / recall

def _direct_pr(ref, sample, k):
    """Kynkaanniemi et al. as the evaluator computes it: squared distances; radius = (k+1)-th smallest
    within the own set (self included); inside if distance <= radius of some point of the other set."""
    r_ref = np.sort(cdist(ref, ref, "sqeuclidean"), axis=1)[:, k]
    r_sample = np.sort(cdist(sample, sample, "sqeuclidean"), axis=1)[:, k]
    d = cdist(ref, sample, "sqeuclidean")
    precision = np.mean(np.any(d <= r_ref[:, None], axis=0))
    recall = np.mean(np.any(d <= r_sample[None, :], axis=1))
    return float(precision), float(recall)


@pytest.fixture(scope="module")
def pr_features():
    rs = np.random.RandomState(4)
    ref = np.abs(rs.normal(0, 1, (150, 32)))                 # nonnegative, like pool features
    sample = np.abs(rs.normal(0.5, 0.8, (200, 32)))
    return ref, sample


@pytest.mark.parametrize("batch", [10000, 7, 64])
def test_precision_recall_matches_direct_formula(pr_features, batch):
    ref, sample = pr_features
    want = _direct_pr(ref, sample, 3)
    assert 0.05 < want[0] < 0.95 and 0.05 < want[1] < 0.95 and want[0] != want[1]
    got = precision_recall(ref, sample, k=3, batch=batch, distance_dtype="float64")
    assert got == pytest.approx(want, abs=1e-12)
    # a different k is a different statement
    assert precision_recall(ref, sample, k=5, batch=batch, distance_dtype="float64") == pytest.approx(
        _direct_pr(ref, sample, 5), abs=1e-12)


def test_radii_are_kth_neighbour_squared_distances(pr_features):
    ref, _ = pr_features
    d = cdist(ref, ref, "sqeuclidean")
    np.fill_diagonal(d, np.inf)                              # excluding self: the k-th neighbour ...
    want = np.sort(d, axis=1)[:, 2]                          # ... for k = 3 (0-based index 2)
    np.testing.assert_allclose(manifold_radii(ref, k=3, batch=11, distance_dtype="float64"), want, rtol=1e-10)
    # ADM's clamp_to_percentile (off by default) zeroes the largest radii
    clamped = manifold_radii(ref, k=3, distance_dtype="float64", clamp_to_percentile=50)
    assert np.sum(clamped == 0) == np.sum(want > np.percentile(want, 50))


def test_float16_distances_emulate_the_evaluator(pr_features):
    ref, sample = pr_features
    exact = cdist(ref, sample, "sqeuclidean")
    half = pairwise_sq_distances(ref, sample, "float16")
    assert half.dtype == np.float32
    # every value is a float16 number, within half precision of the exact distance
    np.testing.assert_array_equal(half, half.astype(np.float16).astype(np.float32))
    assert np.max(np.abs(half - exact) / exact) < 2e-2
    assert np.max(np.abs(pairwise_sq_distances(ref, sample, "float32") - exact) / exact) < 1e-5
    # P/R with half distances (the evaluator's default) is close to the exact statement
    got = precision_recall(ref, sample, k=3, batch=50)
    want = _direct_pr(ref, sample, 3)
    assert got == pytest.approx(want, abs=0.03)
    # overflowing half distances fall back to float32 for that block, as the evaluator does
    big = ref * 300.0
    d = pairwise_sq_distances(big[:10], big[10:20], "float16")
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, cdist(big[:10], big[10:20], "sqeuclidean"), rtol=1e-4)


def test_precision_recall_errors(pr_features):
    ref, sample = pr_features
    with pytest.raises(ValueError, match="feature sizes differ"):
        precision_recall(ref, sample[:, :8])
    with pytest.raises(ValueError, match="k must be in"):
        precision_recall(ref[:3], sample, k=3)
    with pytest.raises(ValueError, match="distance_dtype"):
        precision_recall(ref, sample, distance_dtype="bfloat16")
    with pytest.raises(ValueError, match="batch must be positive"):
        precision_recall(ref, sample, batch=0)


# ------------------------------------------------------------------------------- reference batches

def _features(rs, n):
    return rs.rand(n, 2048).astype(np.float32), rs.rand(n, 17, 17, 7).astype(np.float32)


def test_reference_batch_round_trip(tmp_path):
    rs = np.random.RandomState(5)
    images = rs.randint(0, 256, (12, 8, 8, 3)).astype(np.uint8)
    pool, spatial = _features(rs, 9)
    path = tmp_path / "ref.npz"
    written = write_reference_batch(str(path), images, pool, spatial, n_images=10)
    with np.load(path) as f:
        assert sorted(f.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (10, 8, 8, 3)
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048)
        assert f["mu_s"].shape == (2023,) and f["sigma_s"].shape == (2023, 2023)
    ref = load_reference_batch(str(path), min_images=10)
    assert isinstance(ref, ReferenceBatch)
    np.testing.assert_array_equal(ref.images, images[:10])
    np.testing.assert_allclose(ref.stats.mu, pool.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(ref.stats.sigma, np.cov(pool.astype(np.float64), rowvar=False), rtol=1e-10)
    flat = spatial.reshape(9, -1).astype(np.float64)
    np.testing.assert_allclose(ref.stats_spatial.mu, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ref.stats_spatial.sigma, np.cov(flat, rowvar=False), rtol=1e-10)
    np.testing.assert_array_equal(written.stats.mu, ref.stats.mu)
    np.testing.assert_array_equal(load_sample_batch(str(path)), images[:10])
    # the default asks for the 10,000 images of ADM's reference batches
    with pytest.raises(ValueError, match="holds 10 reference images, fewer than 10000"):
        load_reference_batch(str(path))


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return str(path)


def test_reference_batch_errors(tmp_path):
    rs = np.random.RandomState(6)
    good = dict(arr_0=rs.randint(0, 256, (6, 8, 8, 3)).astype(np.uint8),
                mu=np.zeros(2048), sigma=np.eye(2048), mu_s=np.zeros(2023), sigma_s=np.eye(2023))
    assert load_reference_batch(_write_npz(tmp_path / "ok.npz", **good), min_images=6).images.shape[0] == 6

    no_sigma_s = {k: v for k, v in good.items() if k != "sigma_s"}
    with pytest.raises(KeyError, match=r"lacks \['sigma_s'\]"):
        load_reference_batch(_write_npz(tmp_path / "a.npz", **no_sigma_s), min_images=1)
    with pytest.raises(ValueError, match="'arr_0' must be uint8 images, got dtype float32"):
        load_reference_batch(_write_npz(tmp_path / "b.npz", **dict(good, arr_0=good["arr_0"] / np.float32(255))),
                             min_images=1)
    with pytest.raises(ValueError, match=r"must be \(N, H, W, 3\) images, got shape \(6, 8, 8\)"):
        load_reference_batch(_write_npz(tmp_path / "c.npz", **dict(good, arr_0=good["arr_0"][..., 0])),
                             min_images=1)
    with pytest.raises(ValueError, match=r"'mu' has shape \(2023,\), expected \(2048,\)"):
        load_reference_batch(_write_npz(tmp_path / "d.npz", **dict(good, mu=np.zeros(2023))), min_images=1)
    with pytest.raises(ValueError, match="'sigma_s' must be floating point"):
        load_reference_batch(_write_npz(tmp_path / "e.npz", **dict(good, sigma_s=np.eye(2023, dtype=np.int32))),
                             min_images=1)
    with pytest.raises(ValueError, match="'mu_s' contains non-finite"):
        load_reference_batch(_write_npz(tmp_path / "f.npz", **dict(good, mu_s=np.full(2023, np.nan))),
                             min_images=1)
    with pytest.raises(ValueError, match="holds 6 reference images, fewer than 7"):
        load_reference_batch(_write_npz(tmp_path / "g.npz", **good), min_images=7)
    with pytest.raises(ValueError, match="fewer than 4"):          # k = 3 needs 4 points
        load_reference_batch(_write_npz(tmp_path / "h.npz", **dict(good, arr_0=good["arr_0"][:3])), min_images=1)
    with pytest.raises(FileNotFoundError, match="no reference batch"):
        load_reference_batch(str(tmp_path / "missing.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_reference_batch(str(junk))
    with pytest.raises(KeyError, match="no 'arr_0' array"):
        load_sample_batch(_write_npz(tmp_path / "s.npz", images=good["arr_0"]))

    pool, spatial = _features(rs, 5)
    with pytest.raises(ValueError, match="need at least n_images=10 images, got 6"):
        write_reference_batch(str(tmp_path / "w.npz"), good["arr_0"], pool, spatial, n_images=10)
    with pytest.raises(ValueError, match="must be uint8"):
        write_reference_batch(str(tmp_path / "w.npz"), good["arr_0"].astype(np.float32), pool, spatial, n_images=4)
    with pytest.raises(ValueError, match=r"pool features must be \(N, 2048\)"):
        write_reference_batch(str(tmp_path / "w.npz"), good["arr_0"], pool[:, :100], spatial, n_images=4)
    with pytest.raises(ValueError, match=r"spatial features must be \(N, 17, 17, 7\)"):
        write_reference_batch(str(tmp_path / "w.npz"), good["arr_0"], pool, spatial[..., :6], n_images=4)
    assert not (tmp_path / "w.npz").exists()


def test_evaluate_features_reports_each_metric(monkeypatch):
    rs = np.random.RandomState(7)
    sample = {"pool": rs.rand(30, 2048), "spatial": rs.rand(30, 17, 17, 7), "logits": rs.normal(0, 2, (30, 1008))}
    ref_pool = rs.rand(25, 2048)
    ref_stats, ref_spatial = (np.zeros(2048), np.eye(2048)), (np.zeros(2023), np.eye(2023))
    calls = []
    monkeypatch.setattr(am, "frechet_distance", lambda m1, s1, m2, s2, eps=1e-6: calls.append(m1.shape) or 7.0)
    report = am.evaluate_features(sample, ref_pool, ref_stats, ref_spatial, distance_dtype="float64")
    assert calls == [(2048,), (2023,)]
    assert report["fid"] == 7.0 and report["sfid"] == 7.0
    assert report["inception_score"] == pytest.approx(_direct_is(sample["logits"], 5000), rel=1e-12)
    assert (report["precision"], report["recall"]) == pytest.approx(_direct_pr(ref_pool, sample["pool"], 3))
    with pytest.raises(KeyError, match="lack"):
        am.evaluate_features({"pool": sample["pool"]}, ref_pool, ref_stats, ref_spatial)


# 6 images: singular statistics by construction, and our Frechet distance says so.
@pytest.mark.filterwarnings("ignore:frechet distance. singular product:UserWarning")
def test_evaluate_command_end_to_end(tmp_path, capsys):
    """`dit-jax evaluate REF.npz SAMPLES.npz --inception W`: the printed/JSON metrics equal the
    metric functions applied to the same network's features (random Inception weights)."""
    import json

    from dit_jax.cli import main
    from dit_jax.convert.inception_torch import save_npz
    from dit_jax.metrics import adm_metrics
    from dit_jax.models.inception import extract_features, init_variables

    variables = init_variables(0)
    save_npz(variables, str(tmp_path / "inception.npz"))
    rng = np.random.default_rng(0)
    ref_images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    samples = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    ref_feats = extract_features(variables, ref_images, batch_size=6)
    adm_metrics.write_reference_batch(str(tmp_path / "ref.npz"), ref_images, ref_feats["pool"], ref_feats["spatial"],
                                      n_images=6)
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    assert main(["evaluate", str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), "--inception",
                 str(tmp_path / "inception.npz"), "--batch-size", "6", "--min-reference-images", "4"]) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "sFID" in out and "Precision" in out
    got = json.load(open(tmp_path / "samples.metrics.json"))
    feats = extract_features(variables, samples, batch_size=6)
    # The cheap metrics recomputed here; FID/sFID (2048-d and 2023-d sqrtm, tens of seconds on
    # this CPU) are checked against their formulas in the tests above.
    assert got["inception_score"] == pytest.approx(adm_metrics.inception_score(feats["logits"]), rel=1e-6)
    p, r = adm_metrics.precision_recall(ref_feats["pool"], feats["pool"])
    assert (got["precision"], got["recall"]) == (pytest.approx(p), pytest.approx(r))
    # FID and sFID recomputed from the same samples' features and the statistics the reference batch
    # file holds (read here with numpy), by the exact few-sample formula above.
    with np.load(tmp_path / "ref.npz") as ref:
        want = {"fid": few_sample_frechet(feats["pool"], ref["mu"], ref["sigma"]),
                "sfid": few_sample_frechet(feats["spatial"], ref["mu_s"], ref["sigma_s"])}
        # Negative control, and the formula's own check: the reference images scored as the samples
        # are at distance 0 from their own statistics, over 10x the tolerance from the samples' FID.
        control = few_sample_frechet(ref_feats["pool"], ref["mu"], ref["sigma"])
        assert abs(control) < 1e-7 * np.trace(ref["sigma"]), control  # measured 8e-9 of the trace
    print("evaluate command vs recomputed:", {k: (got[k], want[k]) for k in want}, "control", control)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=FEW_SAMPLE_ABS), k
    assert got["fid"] - control > 10 * FEW_SAMPLE_ABS
    assert got["num_samples"] == 5
    # A wrong file is a clear error.
    np.savez(tmp_path / "bad.npz", images=samples)
    assert main(["evaluate", str(tmp_path / "ref.npz"), str(tmp_path / "bad.npz"), "--inception",
                 str(tmp_path / "inception.npz"), "--min-reference-images", "4"]) == 2
    assert "no 'arr_0' array" in capsys.readouterr().err


def test_reference_batch_command_from_a_tfds_dataset(tmp_path, capsys):
    """`dit-jax reference-batch`: statistics of every image of a TFDS dataset, some kept as arr_0,
    in the layout `load_reference_batch` (and `dit-jax evaluate`) reads."""
    from PIL import Image

    from dit_jax.cli import main
    from dit_jax.convert.inception_torch import save_npz
    from dit_jax.data.image_folder import build_image_folder
    from dit_jax.data.pipeline import DecodeCrop, open_source
    from dit_jax.models.inception import extract_features, init_variables

    rng = np.random.default_rng(1)
    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    build_image_folder(str(tmp_path / "imgs"), str(tmp_path / "tfds"), "ref_images", log=lambda s: None)
    variables = init_variables(0)
    save_npz(variables, str(tmp_path / "inception.npz"))
    out = str(tmp_path / "ref.npz")
    assert main(["reference-batch", "--dataset", "ref_images", "--data-dir", str(tmp_path / "tfds"), "--image-size",
                 "32", "--inception", str(tmp_path / "inception.npz"), "--num-images", "4", "--chunk", "3",
                 "--batch-size", "3", "--out", out]) == 0
    ref = am.load_reference_batch(out, min_images=4)
    assert ref.images.shape == (4, 32, 32, 3)
    source = open_source("ref_images", str(tmp_path / "tfds"))
    crop = DecodeCrop(32, 3, 2)
    every = np.stack([crop.map({**source[i], "_key": i})["image"] for i in range(6)])
    # Batches of 3 here and in the command: one compiled 299 px network for the chunks of 3 and this
    # check (the default batch gave chunks of 4 and 2 and these 6 images three programs).
    pool = extract_features(variables, every, batch_size=3, outputs=("pool",))["pool"]
    np.testing.assert_allclose(ref.stats.mu, pool.mean(0), rtol=1e-5, atol=1e-6)  # all 6 images, in any order
    assert any(np.array_equal(ref.images[0], img) for img in every)
