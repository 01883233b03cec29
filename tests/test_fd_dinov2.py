"""FD_DINOv2 against a statement of EDM2's calculate_metrics.py (tests/dinov2_reference/edm2_detector.py)
on the same uint8 images, with a tiny random ViT-L-shaped detector (the plain model: offset 0.1, no
antialias, CLS-token features): both resize modes, the statistics and the distance."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from dit_jax.exit_codes import BadInput
from dit_jax.metrics import fd_dinov2 as fd
from dit_jax.models.dinov2 import dinov2_config

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = dict(embed_dim=48, depth=2, num_heads=3)
N = 64


def _load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "dinov2_reference", file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


vit = _load("dinov2_reference_vit", "vision_transformer.py")
edm2 = _load("dinov2_reference_edm2", "edm2_detector.py")


def _images(seed, n, size, smooth):
    """uint8 images with structure (a blurred field plus noise), two kinds for two distributions."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size // 8, size // 8, 3)).astype(np.float32)
    x = np.repeat(np.repeat(base, 8, 1), 8, 2) + rng.normal(0, 40 if smooth else 90, (n, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def setup():
    from dit_jax.convert.dinov2_torch import params_from_state_dict
    from dit_jax.parity.dinov2 import randomize, state_dict_numpy
    torch.manual_seed(0)
    model = vit.hub_model("l", False, **TINY)
    randomize(model, 0)
    config = dinov2_config(fd.DETECTOR, **TINY)
    params = params_from_state_dict(state_dict_numpy(model), config)
    samples, reference = _images(1, N, 256, False), _images(2, N, 256, True)
    return model, config, params, samples, reference


def _theirs(model, images, mode, batch=32):
    det = edm2.DINOv2Detector(model, mode)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    feats = torch.cat([det(nchw[i:i + batch]) for i in range(0, len(nchw), batch)]).numpy()
    return feats, edm2.statistics(det, [nchw[i:i + batch] for i in range(0, len(nchw), batch)])


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("mode", fd.RESIZE_MODES)
def test_features_statistics_and_distance(setup, mode):
    """Features <= 1e-5 relative (measured ~5e-7), statistics and FD_DINOv2 <= 1e-6 relative of EDM2's."""
    model, config, params, samples, reference = setup
    ours_s = fd.dinov2_features(params, samples, config, resize_mode=mode, batch_size=24)
    ours_r = fd.dinov2_features(params, reference, config, resize_mode=mode, batch_size=24)
    theirs_s, stats_s = _theirs(model, samples, mode)
    theirs_r, stats_r = _theirs(model, reference, mode)
    feat_err = max(_rel(ours_s, theirs_s), _rel(ours_r, theirs_r))
    mine_s, mine_r = fd.statistics(ours_s), fd.statistics(ours_r)
    dist, dist_ref = fd.fd_dinov2(mine_s, mine_r), edm2.frechet(*stats_s, *stats_r)
    # the distance math alone, on EDM2's own statistics
    math_err = abs(fd.fd_dinov2(stats_s, stats_r) - dist_ref) / abs(dist_ref)
    print(f"\n{mode}: features rel {feat_err:.2e}, sigma rel {_rel(mine_s[1], stats_s[1]):.2e}, "
          f"FD ours {dist:.9g} EDM2 {dist_ref:.9g} rel {abs(dist - dist_ref) / dist_ref:.2e}, "
          f"distance math alone rel {math_err:.2e}")
    assert feat_err < 1e-5
    assert _rel(mine_s[0], stats_s[0]) < 1e-5 and _rel(mine_s[1], stats_s[1]) < 1e-5
    assert abs(dist - dist_ref) / abs(dist_ref) < 1e-6
    assert math_err < 1e-9


def test_negative_controls(setup):
    """The plain (non-antialiased) resize, patch-token features, a missing std division, or the PIL resize
    in place of the torch one each move the features by far more than the tolerance."""
    import jax.numpy as jnp
    from dit_jax.models.torch_resize import bicubic_matrix, resize_hw
    from dit_jax.models.dinov2 import DinoV2
    model, config, params, samples, _ = setup
    x = samples[:16]
    theirs, _ = _theirs(model, x, "torch")
    plain = fd.normalise(resize_hw(jnp.asarray(x, jnp.float32), bicubic_matrix(256, 224), bicubic_matrix(256, 224)))
    unscaled = (resize_hw(jnp.asarray(x, jnp.float32), *fd._torch_resize_matrices(256, 256)) / 255
                - jnp.asarray(fd.IMAGENET_MEAN))
    apply = DinoV2(config).apply
    for wrong in (apply({"params": params}, plain)["x_norm_clstoken"],
                  apply({"params": params}, unscaled)["x_norm_clstoken"],
                  apply({"params": params}, fd.preprocess(x))["x_norm_patchtokens"].mean(1),
                  fd.dinov2_features(params, x, config, resize_mode="pil")):
        assert _rel(wrong, theirs) > 1e-3


def test_reference_statistics_npz(setup, tmp_path):
    """From a reference batch's arr_0 images, and from saved statistics, the same (mu, sigma)."""
    _, config, params, _, reference = setup
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=reference)
    mu, sigma = fd.reference_statistics(str(path), params, config, batch_size=32)
    want = fd.statistics(fd.dinov2_features(params, reference, config, batch_size=32))
    np.testing.assert_allclose(mu, want[0], rtol=1e-12)
    fd.save_statistics(str(tmp_path / "stats.npz"), mu, sigma)
    again = fd.reference_statistics(str(tmp_path / "stats.npz"), params, config)
    np.testing.assert_array_equal(again[1], sigma)
    np.savez(tmp_path / "empty.npz", mu=mu)
    with pytest.raises(BadInput, match="neither fd_dinov2_mu"):
        fd.reference_statistics(str(tmp_path / "empty.npz"), params, config)


def test_without_weights_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match=r"ViT-L/14 weights: download https://dl\.fbaipublicfiles\.com/dinov2/"
                                       r"dinov2_vitl14/dinov2_vitl14_pretrain\.pth.*--dinov2"):
        fd.load_detector("")
    with pytest.raises(BadInput, match=r"dinov2_vitl14_pretrain\.pth' not found: download"):
        fd.load_detector(str(tmp_path))
    with pytest.raises(BadInput, match="resize mode"):
        fd.preprocess(np.zeros((1, 8, 8, 3), np.uint8), "bilinear")
    with pytest.raises(BadInput, match="uint8 RGB"):
        fd.preprocess(np.zeros((1, 8, 8, 3), np.float32))


def test_evaluate_command_fd_dinov2(setup, tmp_path, capsys, monkeypatch):
    """`dit-jax evaluate REF SAMPLES --metrics fd_dinov2 --dinov2 W` writes the FD_DINOv2 of the samples
    against the reference's arr_0 (the detector stood in for by the tiny one); a missing --dinov2 or
    --inception, or an unknown metric, is one error line and exit 2."""
    import json
    from dit_jax.cli import main
    from dit_jax.jobs import evaluate_npz as job
    _, config, params, samples, reference = setup
    np.savez(tmp_path / "ref.npz", arr_0=reference)
    np.savez(tmp_path / "s.npz", arr_0=samples)
    (tmp_path / "w.pth").write_bytes(b"stand-in")
    monkeypatch.setattr(job.fd_dinov2, "load_detector", lambda path: (params, config))
    args = ["evaluate", str(tmp_path / "ref.npz"), str(tmp_path / "s.npz"), "--batch-size", "32"]
    assert main(args + ["--metrics", "fd_dinov2", "--dinov2", str(tmp_path / "w.pth"),
                        "--out", str(tmp_path / "m.json")]) == 0
    got = json.load(open(tmp_path / "m.json"))
    want = fd.fd_dinov2(fd.statistics(fd.dinov2_features(params, samples, config)),
                        fd.statistics(fd.dinov2_features(params, reference, config)))
    assert got["fd_dinov2"] == pytest.approx(want, rel=1e-9) and "fid" not in got
    assert got["dinov2_resize"] == "torch"
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args + ["--metrics", "fd_dinov2"]) == 2
    assert "ViT-L/14 weights: download" in capsys.readouterr().err
    assert main(args + ["--metrics", "fid"]) == 2
    assert "--metrics fid needs --inception" in capsys.readouterr().err
    assert main(args + ["--metrics", "fid,kid"]) == 2
    assert "choose from fid, fd_dinov2" in capsys.readouterr().err


def test_training_evaluator(setup, tmp_path, monkeypatch):
    """The evaluator class for training: check names what is missing; score of [-1, 1] images equals the
    metric of their uint8 conversion; describe formats it."""
    import ml_collections
    from dit_jax.sampling.grids import to_uint8
    _, config, params, samples, reference = setup
    np.savez(tmp_path / "ref.npz", arr_0=reference)
    section = ml_collections.ConfigDict(dict(kind="fd_dinov2", reference=str(tmp_path / "ref.npz"),
                                             dinov2=str(tmp_path / "w.pth"), dinov2_resize="torch", batch_size=32))
    assert fd.FDDinov2Evaluator.check(section, "evals.fd") == ["evals.fd.dinov2: no file at " + repr(section.dinov2)]
    bad = ml_collections.ConfigDict(dict(kind="fd_dinov2", reference="", dinov2="", dinov2_resize="area"))
    assert len(fd.FDDinov2Evaluator.check(bad, "evals.fd")) == 2
    monkeypatch.setattr(fd, "load_detector", lambda path: (params, config))
    images = samples[:40].astype(np.float32) / 127.5 - 1.0
    scores = fd.FDDinov2Evaluator(section).score(images)
    want = fd.fd_dinov2(fd.statistics(fd.dinov2_features(params, to_uint8(images), config)),
                        fd.statistics(fd.dinov2_features(params, reference, config)))
    assert scores["fd_dinov2"] == pytest.approx(want, rel=1e-9) and scores["num_samples"] == 40
    assert fd.FDDinov2Evaluator.describe({"eval/fd/fd_dinov2": 1.234}, "eval/fd/") == "FD_DINOv2 1.23"


def test_edm2_statistics_pickle(setup, tmp_path):
    """EDM2's reference statistics (a pickle of {'fid': {...}, 'fd_dinov2': {'mu', 'sigma'}}) are read with a
    numpy-only unpickler; a pickle that would run anything else is refused as bad input."""
    import collections
    import pickle
    _, config, params, _, _ = setup
    mu, sigma = np.arange(4.0), np.eye(4)
    with open(tmp_path / "img512.pkl", "wb") as f:
        pickle.dump({"num_images": 10, "fid": {"mu": mu, "sigma": sigma}, "fd_dinov2": {"mu": mu, "sigma": sigma}}, f)
    got = fd.reference_statistics(str(tmp_path / "img512.pkl"), params, config)
    np.testing.assert_array_equal(got[0], mu)
    np.testing.assert_array_equal(got[1], sigma)
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"fd_dinov2": collections.OrderedDict(mu=mu, sigma=sigma)}, f)   # a non-numpy global
    with pytest.raises(BadInput, match="evil.pkl: not EDM2 reference statistics"):
        fd.reference_statistics(str(tmp_path / "evil.pkl"), params, config)
    with open(tmp_path / "fid_only.pkl", "wb") as f:
        pickle.dump({"fid": {"mu": mu, "sigma": sigma}}, f)
    with pytest.raises(BadInput, match="fid_only.pkl: not EDM2 reference statistics"):
        fd.reference_statistics(str(tmp_path / "fid_only.pkl"), params, config)
