"""Checkpoint conversion: PyTorch <-> params exact round trip, files, config inference, errors."""

import argparse
import dataclasses
import types

import jax
import numpy as np
import pytest

from dit_jax.convert.dit_torch import from_torch, infer_config, to_torch
from dit_jax.models.dit import dit_config, init_params
from dit_jax.models.params import stack_blocks
from dit_jax.weights import load_weights, save_weights

CFG = dit_config("DiT-S/4", input_size=8, depth=2, num_classes=10)


@pytest.fixture(scope="module")
def torch_state_dict(reference):
    import torch
    models, _ = reference
    torch.manual_seed(0)
    ref = models.DiT(input_size=8, patch_size=4, hidden_size=384, depth=2, num_heads=6, num_classes=10)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name != "pos_embed":
                p.add_(torch.randn_like(p) * 0.02)
    return {k: v.numpy().copy() for k, v in ref.state_dict().items()}


def test_round_trip_is_bit_exact(torch_state_dict):
    params, cfg = from_torch(torch_state_dict)
    assert cfg.architecture() == CFG.architecture()
    back = to_torch(params, cfg)
    assert sorted(back) == sorted(torch_state_dict)
    for k, v in torch_state_dict.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    # Our params -> torch -> ours is exact too, in the scanned layout as well.
    scan_cfg = dataclasses.replace(cfg, scan_blocks=True)
    scanned, _ = from_torch(torch_state_dict, scan_cfg)
    assert "blocks" in scanned
    again = to_torch(scanned, scan_cfg)
    assert all(np.array_equal(again[k], v) for k, v in torch_state_dict.items())


def test_infer_named_configs_from_shapes():
    """Config inference needs only shapes: checked on full-size XL/2 and B/4 shape dicts."""
    import torch

    import models as ref_models  # from the reference fixture's path
    for name, size in (("DiT-XL/2", 32), ("DiT-B/4", 64)):
        with torch.device("meta"):
            ref = ref_models.DiT_models[name](input_size=size)
        shapes = {k: types.SimpleNamespace(shape=tuple(v.shape)) for k, v in ref.state_dict().items()}
        cfg = infer_config(shapes)
        assert cfg == dit_config(name, input_size=size)
    with pytest.raises(ValueError, match="checkpoint has 28 blocks, DiT-B/2 has 12"):
        with torch.device("meta"):
            ref = ref_models.DiT_models["DiT-XL/2"]()
        infer_config({k: types.SimpleNamespace(shape=tuple(v.shape)) for k, v in ref.state_dict().items()},
                     dit_config("DiT-B/2"))


def test_bad_state_dicts_are_clear(torch_state_dict, reference):
    sd = dict(torch_state_dict)
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(KeyError, match="blocks.1.mlp.fc2.bias"):
        from_torch(sd)
    sd = dict(torch_state_dict, **{"blocks.0.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unexpected names"):
        from_torch(sd)
    with pytest.raises(KeyError, match="not an official DiT state dict"):
        from_torch({"encoder.weight": np.zeros(3)})
    sd = dict(torch_state_dict, pos_embed=torch_state_dict["pos_embed"] + 0.1)
    with pytest.raises(ValueError, match="pos_embed"):
        from_torch(sd)
    with pytest.raises(ValueError, match=r"checkpoint has 10 classes, custom DiT \(depth 2.*\) has 1000 classes"):
        from_torch(torch_state_dict, dit_config("DiT-S/4", input_size=8, depth=2))


def test_pt_files_bare_and_training_checkpoints(torch_state_dict, tmp_path):
    import torch

    from dit_jax.convert import torch_io
    bare = tmp_path / "bare.pt"
    torch_io.save_state_dict(torch_state_dict, str(bare))
    loaded = torch_io.load_state_dict(str(bare))
    assert all(np.array_equal(loaded[k], v) for k, v in torch_state_dict.items())
    # A train.py checkpoint: model, ema, opt and the argparse Namespace of its arguments.
    ema = {k: torch.from_numpy(v) for k, v in torch_state_dict.items()}
    model = {k: v + 1 for k, v in ema.items()}
    ckpt = tmp_path / "0000100.pt"
    torch.save({"model": model, "ema": ema, "opt": {"state": {}}, "args": argparse.Namespace(model="DiT-S/4")}, ckpt)
    assert np.array_equal(torch_io.load_state_dict(str(ckpt))["blocks.0.attn.qkv.weight"],
                          torch_state_dict["blocks.0.attn.qkv.weight"])
    assert np.array_equal(torch_io.load_state_dict(str(ckpt), "model")["blocks.0.attn.qkv.weight"],
                          torch_state_dict["blocks.0.attn.qkv.weight"] + 1)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        torch_io.load_state_dict(str(tmp_path / "missing.pt"))


def test_orbax_weights_round_trip_and_refusal(tmp_path):
    params = init_params(CFG, jax.random.key(0))
    path = save_weights(str(tmp_path / "w"), params, CFG)
    loaded, cfg = load_weights(path)
    assert cfg == CFG
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)))
    scanned, _ = load_weights(path, dataclasses.replace(CFG, scan_blocks=True))
    assert jax.tree.structure(scanned) == jax.tree.structure(stack_blocks(params, CFG.depth))
    with pytest.raises(ValueError, match="checkpoint has 2 blocks, DiT-S/4 has 12"):
        load_weights(path, dit_config("DiT-S/4", input_size=8, num_classes=10))
    with pytest.raises(FileExistsError, match="--force"):
        save_weights(path, params, CFG)
    loaded_again, _ = load_weights(path)  # the refused save lost nothing
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded_again)))
    with pytest.raises(FileNotFoundError, match="not a dit-jax weights directory"):
        load_weights(str(tmp_path))


def test_cli_convert_both_ways(torch_state_dict, tmp_path, capsys):
    from dit_jax.cli import main
    from dit_jax.convert import torch_io
    pt = tmp_path / "in.pt"
    torch_io.save_state_dict(torch_state_dict, str(pt))
    assert main(["convert", "--from-torch", str(pt), "--out", str(tmp_path / "w")]) == 0
    assert main(["convert", "--to-torch", str(tmp_path / "w"), "--out", str(tmp_path / "out.pt")]) == 0
    back = torch_io.load_state_dict(str(tmp_path / "out.pt"))
    assert all(np.array_equal(back[k], v) for k, v in torch_state_dict.items())
    capsys.readouterr()
    assert main(["convert", "--from-torch", str(pt), "--model", "DiT-B/4", "--input-size", "8",
                 "--out", str(tmp_path / "w2")]) == 2
    assert "checkpoint has 2 blocks, DiT-B/4 has 12" in capsys.readouterr().err
    assert main(["convert", "--from-torch", str(pt), "--out", str(tmp_path / "w")]) == 2
    assert "exists" in capsys.readouterr().err


def test_cli_convert_diffusers_folder(tmp_path):
    import torch
    from diffusers import DiTTransformer2DModel

    from dit_jax.cli import main
    torch.manual_seed(0)
    m = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8,
                              num_layers=12, sample_size=8, patch_size=4, num_embeds_ada_norm=10)
    m.save_pretrained(tmp_path / "fresh")
    # A freshly initialised diffusers DiT has a different embedder in every block: the official
    # architecture (one embedder) cannot hold it, and the converter says so.
    assert main(["convert", "--from-diffusers", str(tmp_path / "fresh"), "--sample-size", "8",
                 "--out", str(tmp_path / "w0")]) == 2
    assert not (tmp_path / "w0").exists()
    # Weights converted from the official ones share one embedder: copy block 0's everywhere.
    sd = m.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            if ".norm1.emb." in k:
                v.copy_(sd["transformer_blocks.0.norm1.emb." + k.split(".norm1.emb.")[1]])
    m.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from-diffusers", str(tmp_path / "hf"), "--sample-size", "8",
                 "--out", str(tmp_path / "w")]) == 0
    params, cfg = load_weights(str(tmp_path / "w"))
    assert cfg.architecture() == dit_config("DiT-S/4", input_size=8, num_classes=10).architecture()
    w = m.state_dict()["transformer_blocks.5.attn1.to_k.weight"].numpy()
    np.testing.assert_array_equal(params["blocks_5"]["attn"]["qkv"]["kernel"][:, 1].reshape(384, 384), w.T)


def test_training_and_sampling_import_no_converter():
    """The converters are for people moving weights; a training or sampling process never loads them
    (the package's from_torch & co. load on first use)."""
    import subprocess
    import sys
    script = ("import sys, dit_jax, dit_jax.train.loop, dit_jax.jobs.sample; "
              "print(sorted(m for m in sys.modules if m.startswith('dit_jax.convert'))); "
              "print(dit_jax.from_torch.__module__)")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split("\n")[:2] == ["[]", "dit_jax.convert.dit_torch"]
