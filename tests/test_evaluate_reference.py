"""`dit-jax evaluate REF REF` and reference batches (dit_jax.metrics.frechet, dit_jax.jobs.evaluate_npz,
dit_jax.metrics.adm_metrics), first met as faults on a new user's first day: a warning, and no negative
FID shown, for singular statistics; reference batches written with the usual file mode. Each test failed
before its fix."""

import os

import numpy as np
import pytest

from dit_jax.cli import main

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


# --------------------------------------------- 1. evaluate REF REF: a warning, and no negative FID shown

def test_a_singular_covariance_puts_the_distance_of_identical_statistics_below_zero():
    """The cause of the -0.0041 a user saw: the evaluator adds eps to the diagonals inside the square
    root only, so identical rank-deficient statistics give -2 * F * eps."""
    from dit_jax.metrics.frechet import feature_statistics, frechet_distance
    features = np.random.default_rng(0).normal(size=(6, 64))
    features[:, 0] = 1.0  # a feature without variance: scipy finds the product singular
    mu, sigma = feature_statistics(features)
    with pytest.warns(UserWarning, match="singular product"):
        d = frechet_distance(mu, sigma, mu, sigma)
    assert d == pytest.approx(-2 * 64 * 1e-6, rel=1e-3)


# Singular statistics by construction (the reference against itself), and our Frechet distance says so.
@pytest.mark.filterwarnings("ignore:frechet distance. singular product:UserWarning")
def test_evaluate_the_reference_against_itself_warns_and_prints_no_negative_distance(tmp_path, capsys, monkeypatch):
    import json

    from dit_jax.metrics import adm_metrics, frechet
    from dit_jax.jobs import evaluate_npz as job
    rng = np.random.default_rng(0)
    pool, spatial = rng.normal(size=(6, adm_metrics.POOL_DIM)), rng.normal(size=(6, adm_metrics.SPATIAL_DIM))
    pool[:, 0] = spatial[:, 0] = 1.0  # singular statistics, as in the first test
    ref = str(tmp_path / "ref.npz")
    adm_metrics.write_reference_batch(ref, rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), pool, spatial,
                                      n_images=6)
    # The Inception network stands aside (its features are the reference's own, as for the same images)
    # and the distances are the real formula on the first 64 features (the full 2048-d square root
    # takes tens of seconds here).
    (tmp_path / "i.npz").write_bytes(b"never read")
    monkeypatch.setattr(job, "load_fid_inception", lambda path: {})
    monkeypatch.setattr(job, "extract_features", lambda variables, images, batch_size, model, outputs=None: {
        "pool": pool, "spatial": spatial, "logits": rng.normal(size=(6, adm_metrics.NUM_LOGITS))})
    small = lambda f, s: frechet.frechet_distance(s.mu[:64], s.sigma[:64, :64], s.mu[:64],  # noqa: E731
                                                  s.sigma[:64, :64])
    monkeypatch.setattr(job.adm_metrics, "evaluate_features", lambda feats, ref_pool, stats, stats_s: {  # noqa
        "fid": small(feats, stats), "sfid": small(feats, stats_s), "inception_score": 1.0, "precision": 1.0,
        "recall": 1.0})
    assert main(["evaluate", ref, ref, "--inception", str(tmp_path / "i.npz"), "--min-reference-images", "4",
                 "--out", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "the same file" in out and "the reference batch's own statistics" in out
    lines = out.splitlines()
    values = lines[[i for i, line in enumerate(lines) if line.split("|")[0].strip() == "FID"][0] + 1]
    assert values.split("|")[0].strip() == "0.0000" and "-" not in values, values
    raw = json.load(open(tmp_path / "m.json"))["fid"]
    assert raw == pytest.approx(-2 * 64 * 1e-6, rel=1e-3)  # the JSON keeps the raw value
    assert "printed as 0" in out and "1e-6" in out


# ----------------------------------------------------------------------- 2. reference batches' file mode

def test_reference_batches_are_written_with_the_usual_file_mode(tmp_path):
    from dit_jax.metrics.adm_metrics import POOL_DIM, SPATIAL_DIM, write_reference_batch
    rng = np.random.default_rng(0)
    path = tmp_path / "ref.npz"
    write_reference_batch(str(path), rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
                          rng.normal(size=(6, POOL_DIM)), rng.normal(size=(6, SPATIAL_DIM)), n_images=6)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
