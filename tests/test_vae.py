"""The Flax SD VAE against diffusers' AutoencoderKL (random weights, CPU, float32), and the converter.

Parity is measured as max|ours - diffusers| and that divided by max|diffusers| (printed; run with
-s to see them). Float32 on CPU reaches about 1e-6 relative: the two sides differ only in
convolution/matmul summation order.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models.vae import (AutoencoderKL, VAEConfig, abstract_params, decode_latents, encode_latents,
                                init_params)

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from dit_jax.convert.vae_torch import (VAECheckpointError, expected_state_dict, load_diffusers_vae,  # noqa: E402
                                       vae_config_from_diffusers, vae_from_diffusers, vae_to_diffusers)

REL_TOL = 1e-5    # float32 parity, relative to the largest magnitude of the reference output
BF16_TOL = 5e-2   # bfloat16 compute vs float32 (measured 8.6e-3 to 1.7e-2: bf16 has 8 mantissa bits)
BF16_FLOOR = 8e-4  # a tenth of the smallest measured: below it, bf16 was silently not used
SMALL = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def randomized_diffusers_vae(arch: dict, seed: int = 0):
    """diffusers AutoencoderKL with every parameter random (GroupNorm scales around 1, biases nonzero)."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(**arch).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1:
                is_norm_scale = name.endswith("weight")  # the only 1-D weights are GroupNorm scales
                p.copy_(float(is_norm_scale) + 0.3 * torch.randn_like(p))
            else:  # fan-in scaled so activations stay O(1) through the deep SD network
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
    return vae


def state_dict_numpy(vae) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in vae.state_dict().items()}


def nchw(a) -> np.ndarray:
    return np.asarray(a).transpose(0, 3, 1, 2)


def nhwc(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def compare(what: str, ours, ref, tol: float = REL_TOL) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    err = float(np.abs(ours - ref).max())
    rel = err / float(np.abs(ref).max())
    print(f"{what}: max abs {err:.3g}, rel {rel:.3g} (max |ref| {np.abs(ref).max():.3g})")
    assert rel < tol, f"{what}: relative error {rel:.3g} >= {tol}"
    return rel


class Pair:
    """A randomized diffusers VAE, its converted params, and jitted encode/decode for one config."""

    def __init__(self, arch: dict, seed: int = 0):
        self.torch = randomized_diffusers_vae(arch, seed)
        self.sd = state_dict_numpy(self.torch)
        self.config = VAEConfig(**arch)
        self.params = vae_from_diffusers(self.sd, self.config)
        model = AutoencoderKL(self.config)
        self.encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))
        self.decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))

    def torch_posterior(self, x_nhwc):
        with torch.no_grad():
            return self.torch.encode(torch.from_numpy(np.ascontiguousarray(nchw(x_nhwc)))).latent_dist

    def torch_decode(self, z_nhwc) -> np.ndarray:
        with torch.no_grad():
            return nhwc(self.torch.decode(torch.from_numpy(np.ascontiguousarray(nchw(z_nhwc)))).sample.numpy())


@pytest.fixture(scope="module")
def small() -> Pair:
    return Pair(SMALL)


def images(shape, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


def check_parity(pair: Pair, x: np.ndarray, label: str) -> None:
    post = pair.torch_posterior(x)
    mean, logvar = pair.encode(pair.params, x)
    compare(f"{label} mean", mean, nhwc(post.mean.numpy()))
    compare(f"{label} logvar", logvar, nhwc(post.logvar.numpy()))
    z = np.random.RandomState(1).randn(*mean.shape).astype(np.float32)
    compare(f"{label} decoded", pair.decode(pair.params, z), pair.torch_decode(z))


# -- the model ------------------------------------------------------------------------------------
def test_config_validation():
    assert VAEConfig().downsample_factor == 8 and VAEConfig().scaling_factor == 0.18215
    cfg = VAEConfig(**{**SMALL, "block_out_channels": [32, 64]})
    assert cfg.block_out_channels == (32, 64) and hash(cfg)  # lists become tuples: hashable, jit-static
    with pytest.raises(ValueError, match="not divisible by norm_num_groups"):
        VAEConfig(**{**SMALL, "norm_num_groups": 24})
    with pytest.raises(ValueError, match="block types"):
        VAEConfig(block_out_channels=(32, 64), norm_num_groups=8)  # 4 block types for 2 levels
    with pytest.raises(ValueError, match="only DownEncoderBlock2D"):
        VAEConfig(**{**SMALL, "down_block_types": ("AttnDownEncoderBlock2D",) * 2})
    with pytest.raises(ValueError, match="dtype"):
        VAEConfig(dtype="float64")


def test_param_names_match_diffusers():
    """Every diffusers parameter has exactly one of ours, with the layout-transposed shape (SD and small)."""
    for arch in (SMALL, SD):
        with torch.device("meta"):
            ref = diffusers.AutoencoderKL(**arch).state_dict()
        expected = expected_state_dict(VAEConfig(**arch))
        assert set(expected) == set(ref)
        assert all(tuple(ref[k].shape) == shape for k, (_, shape) in expected.items())
    # the decoder's up blocks hold layers_per_block + 1 resnets, the encoder's down blocks layers_per_block
    params = abstract_params(VAEConfig())
    assert len([k for k in params["decoder"]["up_blocks_0"] if k.startswith("resnets_")]) == 3
    assert len([k for k in params["encoder"]["down_blocks_0"] if k.startswith("resnets_")]) == 2


@pytest.mark.parametrize("hw", [(16, 16), (16, 24)])
def test_parity_small(small, hw):
    check_parity(small, images((2, *hw, 3)), f"small {hw[0]}x{hw[1]}")


def test_parity_full_sd_architecture():
    """The real SD VAE shape (83.7M random parameters) on one small non-square image."""
    check_parity(Pair(SD, seed=1), images((1, 16, 24, 3), seed=2), "SD 16x24")


def test_logvar_clamp(small):
    """Posterior logvar is clamped to [-30, 20] like diffusers' DiagonalGaussianDistribution."""
    sd = dict(small.sd)
    bias = sd["quant_conv.bias"].copy()
    bias[4:6] = [1e3, -1e3]  # push two logvar channels far outside the clamp range
    sd["quant_conv.bias"] = bias
    params = vae_from_diffusers(sd, small.config)
    small.torch.quant_conv.bias.data = torch.from_numpy(bias)
    try:
        x = images((1, 16, 16, 3))
        post = small.torch_posterior(x)
        _, logvar = small.encode(params, x)
    finally:
        small.torch.quant_conv.bias.data = torch.from_numpy(small.sd["quant_conv.bias"].copy())
    logvar = np.asarray(logvar)
    assert np.all(logvar[..., 0] == 20.0) and np.all(logvar[..., 1] == -30.0)
    np.testing.assert_array_equal(logvar[..., :2], nhwc(post.logvar.numpy())[..., :2])


def test_encode_latents_samples_and_scales(small):
    x = images((2, 16, 24, 3))
    key = jax.random.key(7)
    latents = np.asarray(encode_latents(small.params, x, key, small.config))
    noise = np.asarray(jax.random.normal(key, latents.shape, jnp.float32))
    # our own posterior, in numpy: scaling_factor * (mean + exp(0.5 * logvar) * noise)
    mean, logvar = (np.asarray(a) for a in small.encode(small.params, x))
    np.testing.assert_allclose(latents, 0.18215 * (mean + np.exp(0.5 * logvar) * noise), rtol=1e-6, atol=1e-7)
    # the reference statement `vae.encode(x).latent_dist.sample() * 0.18215`, with the same noise
    post = small.torch_posterior(x)
    ref = nhwc((0.18215 * (post.mean + post.std * torch.from_numpy(nchw(noise).copy()))).numpy())
    compare("encode_latents", latents, ref)
    assert not np.allclose(latents, np.asarray(encode_latents(small.params, x, jax.random.key(8), small.config)))


def test_decode_latents_unscales(small):
    z = 0.18215 * np.random.RandomState(3).randn(2, 8, 12, 4).astype(np.float32)  # small config: f = 2
    out = np.asarray(decode_latents(small.params, z, small.config))
    assert out.shape == (2, 16, 24, 3) and out.dtype == np.float32
    compare("decode_latents", out, small.torch_decode(z / 0.18215))


def test_bfloat16_compute_stays_close(small):
    x = images((2, 16, 24, 3))
    z = np.random.RandomState(4).randn(2, 8, 12, 4).astype(np.float32)
    mean32, logvar32 = small.encode(small.params, x)
    image32 = small.decode(small.params, z)
    for param_dtype in ("float32", "bfloat16"):
        cfg = dataclasses.replace(small.config, dtype="bfloat16", param_dtype=param_dtype)
        params = vae_from_diffusers(small.sd, cfg)
        assert jax.tree.leaves(params)[0].dtype == jnp.dtype(param_dtype)
        model = AutoencoderKL(cfg)
        mean, logvar, image = jax.jit(lambda p: (*model.apply({"params": p}, x, method="encode"),
                                                 model.apply({"params": p}, z, method="decode")))(params)
        assert mean.dtype == logvar.dtype == image.dtype == jnp.float32
        for what, a, b in (("mean", mean, mean32), ("logvar", logvar, logvar32), ("decoded", image, image32)):
            assert compare(f"bf16 compute ({param_dtype} params) {what}", a, b, BF16_TOL) > BF16_FLOOR, what


def test_nchw_input_is_a_clear_error(small):
    with pytest.raises(ValueError, match="NCHW"):
        small.encode(small.params, np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="latents must be NHWC"):
        small.decode(small.params, np.zeros((1, 2, 2, 3), np.float32))


def test_init_params_tree_matches_converted(small):
    # abstract: compiling the real init takes XLA ~20 s on 2 CPU cores (threefry for every parameter)
    fresh = jax.eval_shape(init_params, small.config, jax.random.key(0))
    shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)  # noqa: E731
    assert shapes(fresh) == shapes(small.params)


# -- the converter --------------------------------------------------------------------------------
def test_to_diffusers_inverts(small):
    back = vae_to_diffusers(small.params, small.config)
    assert set(back) == set(small.sd)
    for k, v in small.sd.items():
        np.testing.assert_array_equal(back[k], v)


def test_legacy_attention_names(small):
    """Pre-0.14 files name the attention query/key/value/proj_attn; they convert identically."""
    new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in small.sd.items():
        for new, old in new_to_old.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[k] = v
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
    params = vae_from_diffusers(legacy, small.config)
    jax.tree.map(np.testing.assert_array_equal, params, small.params)
    with pytest.raises(VAECheckpointError, match="both the old name"):
        vae_from_diffusers({**legacy, "encoder.mid_block.attentions.0.to_q.weight": legacy[
            "encoder.mid_block.attentions.0.query.weight"]}, small.config)


def test_converter_errors(small):
    sd, cfg = small.sd, small.config
    partial = {k: v for k, v in sd.items() if not k.startswith("decoder.up_blocks.1.")}
    with pytest.raises(VAECheckpointError, match=r"parameters missing \(first: 'decoder.up_blocks.1.resnets.0"):
        vae_from_diffusers(partial, cfg)
    with pytest.raises(VAECheckpointError, match=r"1 unexpected names \(first: 'encoder.extra.weight'\)"):
        vae_from_diffusers({**sd, "encoder.extra.weight": np.zeros(3, np.float32)}, cfg)
    bad = {**sd, "decoder.conv_out.weight": np.zeros((3, 32, 1, 1), np.float32)}
    with pytest.raises(VAECheckpointError, match=r"decoder.conv_out.weight: expected \(3, 32, 3, 3\), got \(3, 32, 1, 1\)"):
        vae_from_diffusers(bad, cfg)
    # the small file against the (default) SD config: names and shapes differ, and the message says how
    with pytest.raises(VAECheckpointError, match=r"block_out_channels=\(32, 64\) \(config: \(128, 256, 512, 512\)\)"):
        vae_from_diffusers(sd)
    with pytest.raises(VAECheckpointError, match="floating-point"):
        vae_from_diffusers({k: v.astype(np.int32) for k, v in sd.items()}, cfg)


def test_not_a_vae_errors():
    from dit_jax.convert.dit_torch import to_torch
    from dit_jax.models import dit
    dit_cfg = dit.DiTConfig(input_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=4)
    dit_params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), dit.abstract_params(dit_cfg))
    with pytest.raises(VAECheckpointError, match="not a diffusers AutoencoderKL state dict.*official DiT state dict"):
        vae_from_diffusers(to_torch(dit_params, dit_cfg))
    with torch.device("meta"):
        unet = diffusers.UNet2DModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                                     norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                     up_block_types=("UpBlock2D",) * 2).state_dict()
    with pytest.raises(VAECheckpointError, match=r"diffusers UNet.*Expected|diffusers UNet"):
        vae_from_diffusers({k: np.zeros(v.shape, np.float32) for k, v in unet.items()})
    compvis = {"encoder.down.0.block.0.conv1.weight": np.zeros((1,)), "quant_conv.weight": np.zeros((1,))}
    with pytest.raises(VAECheckpointError, match="CompVis/LDM-format autoencoder"):
        vae_from_diffusers(compvis)
    with pytest.raises(VAECheckpointError, match="full CompVis/LDM-format Stable Diffusion checkpoint"):
        vae_from_diffusers({"model.diffusion_model.input_blocks.0.0.weight": np.zeros(1),
                            "first_stage_model.encoder.conv_in.weight": np.zeros(1)})


def test_save_pretrained_round_trip(small, tmp_path):
    folder = tmp_path / "vae"
    small.torch.save_pretrained(folder)  # config.json + diffusion_pytorch_model.safetensors
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    for path in (folder, folder / "diffusion_pytorch_model.safetensors", tmp_path):  # tmp_path: pipeline-style vae/
        params = load_diffusers_vae(str(path), small.config)
        jax.tree.map(np.testing.assert_array_equal, params, small.params)
    with open(folder / "config.json") as f:
        import json
        assert vae_config_from_diffusers(json.load(f)).architecture() == small.config.architecture()
    # config.json disagrees with the requested config (here: the default SD VAE)
    with pytest.raises(VAECheckpointError, match="block_out_channels: \\(32, 64\\) in config.json"):
        load_diffusers_vae(str(folder))
    # PyTorch pickle form, through torch.load(weights_only=True)
    bin_folder = tmp_path / "bin"
    small.torch.save_pretrained(bin_folder, safe_serialization=False)
    assert (bin_folder / "diffusion_pytorch_model.bin").is_file()
    jax.tree.map(np.testing.assert_array_equal, load_diffusers_vae(str(bin_folder), small.config), small.params)
    # half-precision files (fp16 variant, bfloat16) load as float32
    from safetensors.torch import save_file as save_torch
    for dtype in (torch.float16, torch.bfloat16):
        half = tmp_path / str(dtype).split(".")[-1]
        half.mkdir()
        save_torch({k: torch.from_numpy(v).to(dtype) for k, v in small.sd.items()},
                   str(half / "diffusion_pytorch_model.fp16.safetensors"))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2),
                     load_diffusers_vae(str(half), small.config), small.params)
    # a partial file names the file and the missing keys
    from safetensors.numpy import save_file
    partial = {k: v for k, v in small.sd.items() if k != "post_quant_conv.bias"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(VAECheckpointError, match=r"partial.safetensors: .*1 of \d+ parameters missing "
                                                 r"\(first: 'post_quant_conv.bias'\)"):
        load_diffusers_vae(str(tmp_path / "partial.safetensors"), small.config)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no diffusion_pytorch_model.safetensors"):
        load_diffusers_vae(str(empty))
    with pytest.raises(FileNotFoundError):
        load_diffusers_vae(os.path.join(str(tmp_path), "nowhere"))


def test_cli_converts_a_diffusers_vae_and_sample_decodes_with_it(tmp_path, capsys):
    """`dit-jax convert --from-diffusers-vae` then `dit-jax sample --vae` on a latent DiT."""
    import jax
    from PIL import Image

    from dit_jax.cli import main
    from dit_jax.models.dit import DiTConfig, init_params
    from dit_jax.weights import load_vae_weights, save_weights

    randomized_diffusers_vae(SMALL).save_pretrained(tmp_path / "hf_vae")
    assert main(["convert", "--from-diffusers-vae", str(tmp_path / "hf_vae"), "--out", str(tmp_path / "vae")]) == 0
    params, cfg = load_vae_weights(str(tmp_path / "vae"))
    assert cfg.block_out_channels == tuple(SMALL["block_out_channels"])
    dit = DiTConfig(input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    w = save_weights(str(tmp_path / "dit"), init_params(dit, jax.random.key(0)), dit)
    out = tmp_path / "grid.png"
    assert main(["sample", "--weights", w, "--vae", str(tmp_path / "vae"), "--num", "2", "--steps", "2",
                 "--upscale", "1", "--nrow", "2", "--out", str(out)]) == 0
    assert "decoded with the VAE" in capsys.readouterr().out
    factor = 2 ** (len(SMALL["block_out_channels"]) - 1)
    with Image.open(out) as grid:
        assert grid.size == (2 * (4 * factor + 2) + 2, 4 * factor + 4)
    assert main(["sample", "--weights", str(tmp_path / "vae")]) == 2  # a VAE is not a DiT
    assert "holds VAE weights" in capsys.readouterr().err
