"""REPA's pieces outside the parity tests: the encoder preprocessing against torch, the projector's input
under scanned blocks, REPA's bad input (one `error:` line, exit 2, nothing written), the latent dataset
that carries the image (and flips it with the latents), and a REPA run's samplers in the sampler builder."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.models.dit import DiT, dit_config

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def test_preprocess_raw_image_matches_torch():
    """x / 255, ImageNet mean/std, then torch's bicubic (a = -0.75, clamped borders, no antialias) to 224."""
    from dit_jax.models.repa import preprocess_raw_image, resize_bicubic
    x = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3)).astype(np.uint8)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    want = torch.nn.functional.interpolate((t - mean) / std, 224, mode="bicubic").permute(0, 2, 3, 1).numpy()
    got = np.asarray(preprocess_raw_image(jnp.asarray(x), 256))
    err = np.abs(got - want).max() / np.abs(want).max()
    assert got.shape == (2, 224, 224, 3) and err < 2e-6, err        # measured 7.4e-7
    # Negative control: jax.image.resize's cubic (Keys a = -0.5, antialiased when shrinking).
    normed = (jnp.asarray(x, jnp.float32) / 255 - jnp.asarray([0.485, 0.456, 0.406])) / jnp.asarray([0.229, 0.224, 0.225])
    other = np.asarray(jax.image.resize(normed, (2, 224, 224, 3), "cubic"))
    assert np.abs(other - want).max() / np.abs(want).max() > 1e-3
    up = np.asarray(resize_bicubic(jnp.asarray(x[:1, :20, :20], jnp.float32), 31))   # upsampling too
    want_up = torch.nn.functional.interpolate(torch.from_numpy(x[:1, :20, :20]).permute(0, 3, 1, 2).float(), 31,
                                              mode="bicubic").permute(0, 2, 3, 1).numpy()
    assert np.abs(up - want_up).max() < 1e-4 * 255


def test_scanned_blocks_capture_the_same_tokens():
    cfg = dit_config("S/2", input_size=8, depth=3, hidden_size=32, num_heads=2, learn_sigma=False)
    x, t, y = jnp.ones((2, 8, 8, 4)), jnp.array([0.2, 0.9]), jnp.array([0, 1])
    params = DiT(cfg).init(jax.random.key(0), x, t, y)["params"]
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape), params)
    from flax.linen import unbox
    params = unbox(params)
    stacked = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    stacked["blocks"] = {"block": jax.tree.map(lambda *a: jnp.stack(a), *[params[f"blocks_{i}"] for i in range(3)])}
    scan = DiT(cfg.__class__(**{**cfg.to_dict(), "scan_blocks": True, "remat": "full"}))
    for k in (1, 2, 3):
        out_u, tok_u = DiT(cfg).apply({"params": params}, x, t, y, capture_depth=k)
        out_s, tok_s = scan.apply({"params": stacked}, x, t, y, capture_depth=k)
        assert np.abs(tok_u - tok_s).max() < 1e-5 and np.abs(out_u - out_s).max() < 1e-5
    # the tokens after block 1 are not those after block 2
    assert np.abs(DiT(cfg).apply({"params": params}, x, t, y, capture_depth=1)[1] - tok_u).max() > 1e-2


def _one_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


BAD = [
    (["--config.repa.encoder=dinov3-vit-b"], ["unknown encoder 'dinov3-vit-b'", "dinov2-vit-b"]),
    (["--config.repa.encoder=digits-mlp", "--config.repa.encoder_depth=9"], ["repa.encoder_depth 9", "model.depth = 4"]),
    (["--config.repa.encoder=dinov2-vit-b"], ["data.image_size 8", "multiple of 256"]),
    (["--config.repa.encoder=digits-mlp", "--config.repa.weighting=cosmic"], ["repa.weighting"]),
    (["--config.repa.encoder=digits-mlp", "--config.repa.weights=a.pth,b.pth"], ["repa.weights: 2 paths"]),
]


@pytest.mark.parametrize("args,needles", BAD, ids=[a[-1] for a, _ in BAD])
def test_bad_repa_config_is_one_error_line_and_writes_nothing(tmp_path, capsys, args, needles):
    wd = tmp_path / "wd"
    assert main(["train", f"--workdir={wd}", "--config.total_steps=1", *args]) == 2
    _one_error(capsys, *needles)
    assert not wd.exists()


def test_dinov2_grid_must_match_the_model(tmp_path, capsys):
    """512 px with patch 4: DINOv2 sees 448 px (32 x 32 tokens), the model 16 x 16: refused before anything runs."""
    wd = tmp_path / "wd"
    assert main(["train", "--dry_run", "--check_files=false", f"--workdir={wd}", "--config=configs/sit.py:XL/4-512",
                 "--config.data.latents=dataset", "--config.repa.encoder=dinov2-vit-b"]) == 2
    _one_error(capsys, "32x32 tokens", "16x16")
    assert not wd.exists()


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    """An 8 px image dataset and its latent datasets, with and without images (a small random VAE)."""
    diffusers = pytest.importorskip("diffusers")
    from PIL import Image

    from dit_jax.convert.vae_torch import vae_config_from_diffusers, vae_from_diffusers
    from dit_jax.data.image_folder import build_image_folder
    from dit_jax.jobs.extract_latents import extract_latents
    from dit_jax.weights import save_vae_weights
    root = tmp_path_factory.mktemp("repa_latents")
    rng = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(root / "images" / f"class_{c}")
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (10, 9, 3), dtype=np.uint8)).save(root / "images" / f"class_{c}" / f"{i}.png")
    data_dir = str(root / "tfds")
    build_image_folder(str(root / "images"), data_dir, "tiny_images", log=lambda s: None)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    cfg = vae_config_from_diffusers(dict(vae.config))
    vae_dir = save_vae_weights(str(root / "vae"), vae_from_diffusers({k: v.numpy() for k, v in vae.state_dict().items()}, cfg), cfg)
    for name, images in (("with_images", True), ("no_images", False)):
        extract_latents("tiny_images", data_dir, 8, vae_dir, name, out_data_dir=data_dir, batch_size=4, shard_size=5,
                        log=lambda s: None, with_images=images)
    return data_dir


def test_latent_records_carry_the_image_and_flip_it_with_the_latents(latents):
    from dit_jax.data.pipeline import DecodeCrop, make_train_loader, open_source
    src = open_source("with_images", latents)
    raw = open_source("tiny_images", latents)
    crop = DecodeCrop(8, 3, 100).map({**raw[0], "_key": 0})["image"]
    assert src[0]["image"].dtype == np.uint8 and np.array_equal(src[0]["image"], crop)
    assert "image" not in open_source("no_images", latents)[0]
    data = dict(name="with_images", data_dir=latents, num_classes=3, random_flip=True, worker_count=0)
    by_mean = {src[i]["mean"].tobytes(): (src[i], False) for i in range(len(src))}
    by_mean.update({src[i]["mean_flip"].tobytes(): (src[i], True) for i in range(len(src))})
    batch = next(iter(make_train_loader(data, 12, seed=1)))
    flips = 0
    for mean, image in zip(batch["mean"], batch["image"]):
        record, flipped = by_mean[mean.tobytes()]
        flips += flipped
        assert np.array_equal(image, record["image"][:, ::-1] if flipped else record["image"])
    assert 0 < flips < 12   # both cases seen


def test_latent_dataset_without_images_is_refused(latents, tmp_path, capsys):
    wd = tmp_path / "wd"
    args = ["train", f"--workdir={wd}", "--config.total_steps=1", "--config.data.name=no_images",
            f"--config.data.data_dir={latents}", "--config.data.latents=dataset", "--config.data.image_size=8",
            "--config.data.channels=3", "--config.data.num_classes=3", "--config.model.num_classes=3",
            "--config.model.input_size=4", "--config.model.in_channels=4", "--config.repa.encoder=digits-mlp",
            "--config.repa.encoder_depth=2"]
    assert main(args) == 2
    _one_error(capsys, "no_images", "--with-images")
    assert not wd.exists()


@pytest.mark.parametrize("sampler", ["repa-sde", "repa-heun"])
def test_repa_run_samples_with_repa_samplers(sampler):
    """A REPA run's objective is REPA's flow: the sampler builder takes REPA's samplers (and refuses SiT's)."""
    from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler
    from dit_jax.transport import repa_samplers
    from dit_jax.transport.repa import RepaFlow
    cfg = dit_config("S/2", input_size=8, depth=2, hidden_size=32, num_heads=2, num_classes=3, learn_sigma=False)
    params = DiT(cfg).init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)), jnp.zeros(1), jnp.zeros(1, jnp.int32))["params"]
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape), params)
    settings = SamplerSettings(sampler=sampler, steps="5", cfg_scale=1.8, cfg_interval=(0.0, 0.7))
    labels, key = jnp.array([0, 2]), jax.random.key(3)
    out = make_sampler(cfg, RepaFlow(), settings)(params, labels, key)
    init_key, step_key = jax.random.split(key)
    x_T = jax.random.normal(init_key, (2, 8, 8, 4))
    fn = lambda x, t, y: DiT(cfg).apply({"params": params}, x, t, y)  # noqa: E731
    kw = dict(num_steps=5, cfg_scale=1.8, guidance_low=0.0, guidance_high=0.7, null_label=3)
    want = (repa_samplers.euler_maruyama_sampler(fn, x_T, labels, step_key, **kw) if sampler == "repa-sde"
            else repa_samplers.euler_sampler(fn, x_T, labels, heun=True, **kw))
    assert np.abs(np.asarray(out) - np.asarray(want)).max() < 1e-5
    with pytest.raises(ValueError, match="repa-sde"):
        make_sampler(cfg, RepaFlow(), SamplerSettings(sampler="heun", steps="5"))


def test_repa_checkpoint_converts_and_samples(tmp_path, capsys):
    """A checkpoint in REPA's train.py layout (random weights): its 'ema' converts (projectors kept, and
    back to REPA's names bit for bit) and samples with REPA's SDE; a corrupted projector name is refused."""
    import argparse

    import repa_helpers as P
    from dit_jax.convert.repa_torch import to_repa_torch
    from dit_jax.weights import load_weights
    ref = P.ref()
    model = P._torch_net(ref)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "0400000.pt"
    torch.save({"model": sd, "ema": sd, "opt": {}, "args": argparse.Namespace(enc_type="dinov2-vit-b"),
                "steps": 400000}, ckpt)
    out = tmp_path / "w"
    assert main(["convert", "--from-repa-torch", str(ckpt), "--out", str(out), "--num-heads", "4"]) == 0
    params, cfg = load_weights(str(out))
    assert cfg.learn_sigma is False and "repa_projectors" in params
    back = to_repa_torch(params, cfg)
    assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
    grid = tmp_path / "grid.png"
    assert main(["sample", "--weights", str(out), "--objective", "repa", "--sampler", "repa-sde", "--steps", "4",
                 "--num", "2", "--cfg-scale", "1.8", "--out", str(grid)]) == 0
    assert grid.with_suffix(".npz").exists()   # latents: no VAE to decode them here
    bad = dict(sd)
    bad["projectors.0.6.weight"] = bad.pop("projectors.0.4.weight")
    torch.save({"ema": bad, "model": bad}, tmp_path / "bad.pt")
    assert main(["convert", "--from-repa-torch", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "w2"),
                 "--num-heads", "4"]) == 2
    _one_error(capsys, "projectors.0.6.weight")


def test_a_dinov2_encoder_plugs_in_through_the_registry(monkeypatch):
    """The DINOv2 path of the registry with a stand-in for dit_jax.models.dinov2 (same interface: dinov2_config,
    DinoV2(config)(NHWC) -> {"x_norm_patchtokens"}, resample_pos_embed): a REPA step at 256 px on stored latents
    plus the record's image reads 16 x 16 patch tokens of the preprocessed 224 px image."""
    import sys
    import types

    import flax.linen as nn

    seen = {}

    class FakeDinoV2(nn.Module):
        config: dict

        @nn.compact
        def __call__(self, x):
            seen["input"] = x.shape
            b, h, w, c = x.shape
            patches = x.reshape(b, h // 14, 14, w // 14, 14, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, 14 * 14 * c)
            pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + 16 * 16, 768))
            return {"x_norm_patchtokens": nn.Dense(768)(patches) + pos[:, 1:]}

    fake = types.ModuleType("dit_jax.models.dinov2")
    fake.DinoV2, fake.dinov2_config = FakeDinoV2, lambda name: {"name": name}
    fake.resample_pos_embed = lambda params, grid: params
    monkeypatch.setitem(sys.modules, "dit_jax.models.dinov2", fake)
    import dit_jax.models
    monkeypatch.setattr(dit_jax.models, "dinov2", fake, raising=False)

    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.train.programs import abstract_batch, build_train_step, vae_argument
    from dit_jax.run import config_for_model, make_run
    from dit_jax.train.repa import attach
    cfg = dit_config("S/2", input_size=32, depth=2, hidden_size=32, num_heads=2, num_classes=10, learn_sigma=False)
    config = config_for_model(cfg)
    config.data.update(latents="dataset", image_size=256, num_classes=10)
    config.repa.update(encoder="dinov2-vit-b", encoder_depth=1, projector_dim=64, weights="unused.pth")
    config.batch_size = 2
    run = attach(make_run(config, vae=None, mesh=make_mesh(devices=jax.devices()[:1])), "random")
    program = build_train_step(run)
    shapes = abstract_batch(run)
    assert shapes["image"].shape == (2, 256, 256, 3) and shapes["mean"].shape == (2, 32, 32, 4)
    rng = np.random.default_rng(0)
    batch = {"mean": jnp.asarray(rng.standard_normal((2, 32, 32, 4)), jnp.float16),
             "std": jnp.full((2, 32, 32, 4), 0.1, jnp.float16), "label": jnp.array([1, 2], jnp.int32),
             "image": jnp.asarray(rng.integers(0, 256, (2, 256, 256, 3)), jnp.uint8)}
    state, metrics = program.step(program.init(None), batch, vae_argument(run))
    assert seen["input"] == (2, 224, 224, 3)
    assert np.isfinite(float(metrics["proj_loss"])) and -1 <= float(metrics["proj_loss"]) <= 1
    assert state.params["repa_projectors"]["projector_0_fc3"]["kernel"].shape == (64, 768)
