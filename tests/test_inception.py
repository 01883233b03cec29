"""FID Inception: parity with pytorch-fid's InceptionV3 (use_fid_inception=True) on a randomised
state dict (no download), the converter (round trip, every name, clear errors) and the resizes.

pytorch-fid's network is built offline by monkeypatching its `load_state_dict_from_url` to return a
random state dict (He-scaled convs, random BN running mean / positive variance / affine, random fc);
the same dict is converted to our variables. Relative error = max|ours - torch| / max|torch|.

Measured (CPU, float32, 2 random uint8 images; printed with `pytest -s`):
  64x64:   pool 3.5e-7, spatial (Mixed_6d.branch1x1[..., :7]) 1.8e-6, logits 5.6e-7
  299x299: pool 5.2e-7, spatial 2.1e-6, logits 6.0e-7
"""

import time

import jax
import numpy as np
import pytest

from dit_jax.convert.inception_torch import (expected_shapes, from_torch, load_fid_inception, save_npz,
                                             to_torch)
from dit_jax.models.inception import (FIDInceptionV3, abstract_variables, extract_features, init_variables,
                                      preprocess_images, resize_matrix)

torch = pytest.importorskip("torch")
pfi = pytest.importorskip("pytorch_fid.inception")

# Relative error against pytorch-fid per output, about 10x the measured (2 CPU cores, float32, at
# 64x64 / 299x299): pool 5.0e-7 / 6.1e-7, spatial 2.0e-6 / 1.9e-6, logits 6.3e-7 / 7.8e-7.
TOL = {"pool": 6e-6, "spatial": 2e-5, "logits": 8e-6}
MEASURED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    if MEASURED:
        print("\nFID Inception vs pytorch-fid, measured (max|a-b| / max|b|, seconds):")
        for name, value in MEASURED.items():
            print(f"  {name:<36} {value}")


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(seed)
    sd = {}
    for name, shape in expected_shapes().items():
        if name.endswith("conv.weight"):
            a = rs.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        elif name.endswith("bn.running_var"):
            a = rs.uniform(0.5, 2.0, shape)
        elif name.endswith("bn.running_mean"):
            a = rs.normal(0.0, 0.2, shape)
        elif name.endswith("bn.weight"):
            a = rs.uniform(0.5, 1.5, shape)
        elif name.endswith("bn.bias"):
            a = rs.normal(0.0, 0.2, shape)
        elif name == "fc.weight":
            a = rs.normal(0.0, 0.02, shape)
        else:
            a = rs.normal(0.0, 0.1, shape)
        sd[name] = a.astype(np.float32)
    return sd


@pytest.fixture(scope="module")
def state_dict():
    return random_state_dict()


@pytest.fixture(scope="module")
def torch_net(state_dict):
    """pytorch-fid's InceptionV3 with the random weights, and a hook on TF mixed_6/conv."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pfi, "load_state_dict_from_url",
                   lambda *a, **k: {n: torch.from_numpy(v.copy()) for n, v in state_dict.items()})
        net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                              normalize_input=True, use_fid_inception=True).eval()
    mixed_6d = net.blocks[2][6]           # block 2 = Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e
    assert type(mixed_6d).__name__ == "FIDInceptionC" and mixed_6d.branch7x7_1.conv.out_channels == 160
    captured = {}
    mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.__setitem__("spatial", o.detach().clone()))
    return net, captured


@pytest.fixture(scope="module")
def ours(state_dict):
    model = FIDInceptionV3()
    return model, from_torch(state_dict), jax.jit(model.apply)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("size", [64, 299])
def test_parity_with_pytorch_fid(size, state_dict, torch_net, ours):
    net, captured = torch_net
    _, variables, apply = ours
    images = np.random.RandomState(size).randint(0, 256, (2, size, size, 3)).astype(np.uint8)

    t0 = time.perf_counter()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        pool_ref = net(x)[0][:, :, 0, 0].numpy()
    t_torch = time.perf_counter() - t0
    spatial_ref = captured["spatial"].permute(0, 2, 3, 1).numpy()[..., :7]
    logits_ref = (torch.from_numpy(pool_ref) @ torch.from_numpy(state_dict["fc.weight"]).T).numpy()

    t0 = time.perf_counter()
    out = jax.block_until_ready(apply(variables, images))
    t_jax = time.perf_counter() - t0

    assert out["pool"].shape == (2, 2048) and out["spatial"].shape == (2, 17, 17, 7)
    assert out["logits"].shape == (2, 1008)
    assert all(v.dtype == np.float32 for v in out.values())
    errs = {"pool": _rel(out["pool"], pool_ref), "spatial": _rel(out["spatial"], spatial_ref),
            "logits": _rel(out["logits"], logits_ref)}
    for k, e in errs.items():
        MEASURED[f"{size}x{size} {k}"] = f"{e:.2e}"
    MEASURED[f"{size}x{size} time torch / jax(+compile)"] = f"{t_torch:.2f} / {t_jax:.2f}"
    # The features are not degenerate (random BN statistics make every layer matter).
    assert np.abs(pool_ref).max() > 0.1 and (spatial_ref > 0).mean() > 0.05
    for k, e in errs.items():
        assert e < TOL[k], f"{k} at {size}x{size}: relative error {e:.3e}"


def test_logits_exclude_the_fc_bias(state_dict, ours):
    _, variables, apply = ours
    images = np.random.RandomState(1).randint(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    out = apply(variables, images)
    direct = np.asarray(out["pool"], np.float64) @ state_dict["fc.weight"].T.astype(np.float64)
    assert _rel(out["logits"], direct) < 1e-5
    assert np.abs(state_dict["fc.bias"]).max() > 0.05      # so a bias added by mistake would show


def test_extract_features_batches_and_pads(ours):
    model, variables, apply = ours
    images = np.random.RandomState(2).randint(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    feats = extract_features(variables, images, batch_size=2, model=model)
    direct = apply(variables, images[2:])
    assert feats["pool"].shape == (3, 2048) and feats["spatial"].shape == (3, 2023)
    assert _rel(feats["pool"][2:], direct["pool"]) < 1e-5
    # (h, w, c) flattening, as the ADM evaluator reshapes its NHWC tensor
    np.testing.assert_allclose(feats["spatial"][2:], np.asarray(direct["spatial"]).reshape(1, -1), rtol=1e-5,
                               atol=1e-6)


def test_bfloat16_compute_is_close(ours):
    _, variables, apply = ours
    images = np.random.RandomState(3).randint(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    ref = apply(variables, images)
    out = jax.jit(FIDInceptionV3(dtype="bfloat16").apply)(variables, images)
    assert all(v.dtype == np.float32 for v in out.values())
    e = _rel(out["pool"], ref["pool"])
    MEASURED["bfloat16 compute, pool"] = f"{e:.2e}"
    # Measured 6.3e-3 (2 CPU cores); above a tenth of it, or bf16 was silently not used.
    assert 6e-4 < e < 6e-2


# ------------------------------------------------------------------------------------------ resizes

@pytest.mark.parametrize("src,dst", [(64, 299), (256, 299), (512, 299), (300, 299), (5, 17), (17, 5), (299, 299)])
def test_resize_matches_torch_interpolate(src, dst):
    rs = np.random.RandomState(src * 1000 + dst)
    x = rs.uniform(0, 255, (2, src, src + 3, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(dst, dst),
                                          mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    wh, ww = resize_matrix(src, dst), resize_matrix(src + 3, dst)
    ours = np.einsum("oh,nhwc->nowc", wh.astype(np.float64), x)
    ours = np.einsum("pw,nowc->nopc", ww.astype(np.float64), ours)
    assert np.max(np.abs(ours - ref)) < 1e-3        # of 255
    np.testing.assert_allclose(wh.sum(1), 1.0, rtol=1e-6)


def _tf1_resize_direct(x, out_h, out_w):
    """TF 1.x ResizeBilinear (align_corners=False, half_pixel_centers=False), pixel by pixel."""
    n, h, w, c = x.shape
    sy, sx = np.float32(h) / np.float32(out_h), np.float32(w) / np.float32(out_w)
    y = np.zeros((n, out_h, out_w, c), np.float64)
    for i in range(out_h):
        fy = np.float32(i) * sy
        y0, y1, ly = int(np.floor(fy)), min(int(np.ceil(fy)), h - 1), float(fy - np.floor(fy))
        for j in range(out_w):
            fx = np.float32(j) * sx
            x0, x1, lx = int(np.floor(fx)), min(int(np.ceil(fx)), w - 1), float(fx - np.floor(fx))
            top = x[:, y0, x0] + (x[:, y0, x1] - x[:, y0, x0]) * lx
            bottom = x[:, y1, x0] + (x[:, y1, x1] - x[:, y1, x0]) * lx
            y[:, i, j] = top + (bottom - top) * ly
    return y


def test_tf1_preprocessing_matches_the_graph_statement():
    x = np.random.RandomState(0).randint(0, 256, (1, 13, 21, 3)).astype(np.uint8)
    ours = np.asarray(preprocess_images(x, "tf1", size=40))
    ref = (_tf1_resize_direct(x.astype(np.float64), 40, 40) - 128.0) / 128.0
    assert np.max(np.abs(ours - ref)) < 1e-5
    same = np.random.RandomState(1).randint(0, 256, (1, 299, 299, 3)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(preprocess_images(same, "tf1")), (same - 128.0) / 128.0)
    np.testing.assert_allclose(np.asarray(preprocess_images(same, "pytorch_fid")), same / 127.5 - 1.0,
                               rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        preprocess_images(same, "bicubic")
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        preprocess_images(same[..., :1], "tf1")


# -------------------------------------------------------------------------------------- converter

def test_converter_round_trip_every_name(state_dict):
    variables = from_torch(state_dict)
    back = to_torch(variables)
    assert sorted(back) == sorted(state_dict)
    for k, v in state_dict.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    # our tree has exactly the structure the module defines, and nothing else
    abstract = abstract_variables()
    got = jax.tree_util.tree_map(lambda a: a.shape, variables)
    want = jax.tree_util.tree_map(lambda a: a.shape, abstract)
    assert got == want
    n_ours = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    n_torch = sum(v.size for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var")))
    assert n_ours == n_torch == 23_850_960
    # init_variables builds the same structure without compiling model.init
    assert jax.tree_util.tree_map(lambda a: a.shape, init_variables()) == want


def test_converter_errors(state_dict, tmp_path):
    with pytest.raises(ValueError, match="expected a state dict"):
        from_torch([1, 2, 3])
    with pytest.raises(ValueError, match="not pytorch-fid's FID Inception"):
        from_torch({"weight": np.zeros(3, np.float32)})
    partial = {k: v for k, v in state_dict.items() if not k.startswith("Mixed_7c.")}
    with pytest.raises(ValueError, match=r"45 of 472 tensors missing \(Mixed_7c\."):
        from_torch(partial)
    aux = dict(state_dict, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(ValueError, match="unexpected tensors.*aux classifier"):
        from_torch(aux)
    bad = dict(state_dict, **{"Mixed_6d.branch1x1.conv.weight": np.zeros((192, 768, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"Mixed_6d\.branch1x1\.conv\.weight has shape \(192, 768, 3, 3\)"):
        from_torch(bad)
    ints = dict(state_dict, **{"fc.bias": np.zeros(1008, np.int64)})
    with pytest.raises(ValueError, match="fc.bias has dtype int64"):
        from_torch(ints)
    # num_batches_tracked (a torchvision buffer) is accepted and ignored
    extra = dict(state_dict, **{"Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0)})
    assert from_torch(extra)["params"]["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 32)

    # files
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        load_fid_inception(str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>404</html>")
    with pytest.raises(ValueError, match="cannot be read as a PyTorch state dict"):
        load_fid_inception(str(garbage))
    pth = tmp_path / "partial.pth"
    torch.save({k: torch.from_numpy(v) for k, v in partial.items()}, str(pth))
    with pytest.raises(ValueError, match=r"partial\.pth: 45 of 472 tensors missing"):
        load_fid_inception(str(pth))
    full = tmp_path / "full.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, str(full))
    loaded = load_fid_inception(str(full))
    npz = tmp_path / "inception.npz"
    save_npz(loaded, str(npz))
    again = load_fid_inception(str(npz))
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)
