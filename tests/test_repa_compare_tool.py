"""tools/compare_torch.py --reference-repa without the checkouts: its refusals (one `error:` line, exit 2), the
name mapping to REPA's --enc-type, and the draw queue that feeds REPA's torch.rand/randn/randn_like. The
comparison itself needs checkouts of sihyun-yu/REPA and facebookresearch/dinov2 (docs/repa.md)."""

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dit_jax.parity.repa import Draws, repa_encoder_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_torch_repa_tool", os.path.join(ROOT, "tools",
                                                                                       "compare_torch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv,says", [
    (["--reference-repa", "REPA"], "--reference-dinov2"),
    (["--reference-repa", "REPA", "--reference-dinov2", "D", "--break", "nothing"], "--break"),
    (["--reference-repa", "{tmp}", "--reference-dinov2", "{tmp}"], "sihyun-yu/REPA checkout"),
    (["--reference-repa", "{tmp}", "--reference-dinov2", "{tmp}", "--train", "-1"], "--train"),
])
def test_refusals(tool, tmp_path, capsys, argv, says):
    code = tool.main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and says in err, err


def test_encoder_names_map_to_repas_enc_type():
    assert repa_encoder_name("dinov2-vit-b") == "dinov2-vit-b"
    assert repa_encoder_name("dinov2-vit-s-reg") == "dinov2reg-vit-s"   # REPA: 'reg' in the encoder type
    with pytest.raises(ValueError, match="--repa-encoders"):
        repa_encoder_name("digits-mlp")


def test_draws_are_served_in_order_and_checked():
    u, n = np.full((2, 1, 1, 1), 0.25, np.float32), np.ones((2, 3), np.float32)
    with Draws(("rand", u), ("randn", n)):
        assert torch.equal(torch.rand((2, 1, 1, 1)), torch.from_numpy(u))
        got = torch.randn_like(torch.zeros((2, 3), dtype=torch.float64))
        assert got.dtype == torch.float64 and torch.equal(got, torch.ones((2, 3), dtype=torch.float64))
    saved = torch.rand
    with pytest.raises(AssertionError, match="draws randn"):   # REPA drawing in another order is caught
        with Draws(("rand", u)):
            torch.randn(2, 1, 1, 1)
    assert torch.rand is saved   # the originals are back after a failure
    with pytest.raises(AssertionError, match="unused"):
        with Draws(("rand", u), ("randn", n)):
            torch.rand((2, 1, 1, 1))
    with pytest.raises(AssertionError, match=r"\(3, 1, 1, 1\)"):   # a wrong shape is caught
        with Draws(("rand", u)):
            torch.rand((3, 1, 1, 1))
