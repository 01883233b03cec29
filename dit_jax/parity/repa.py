"""Side-by-side comparison with REPA's PyTorch code (a sihyun-yu/REPA checkout) and the DINOv2 encoders it
aligns to (a facebookresearch/dinov2 checkout), on the same weights and random draws, float32 (the samplers'
state float64, as REPA keeps it).

The checkouts' code runs as it is: REPA's `models/sit.py` (its SiT with projectors), `loss.py` (SILoss),
`samplers.py`, `utils.load_encoders` and, from `train.py`, `preprocess_raw_image`, `sample_posterior` and
`update_ema`. `load_encoders` calls `torch.hub.load('facebookresearch/dinov2', ...)`, which no machine here can
download: it is served from the dinov2 checkout's own hubconf.py with pretrained=False, then every tensor is
randomised. train.py's `main()` needs a dataset, a VAE download and accelerate, so its loop body is the one
piece stated here: `loss.mean() + proj_coeff * proj_loss.mean()`, backward, `clip_grad_norm_(1.0)`, AdamW,
`update_ema` (single process, float32: `--mixed-precision no`). train.py imports accelerate and wandb for
main() alone; they are stubbed while it is imported when not installed. REPA's code needs timm.

Rows (`dit_jax.parity.Row`: max abs and max|ours - ref| / max|ref|):
  encoder   preprocess_raw_image (x/255, ImageNet mean/std, bicubic to 224), and each encoder's
            x_norm_patchtokens as train.py reads them: load_encoders' hub model (its position table
            resampled to 16x16 by timm) beside ours (train.repa_encoders.load of the same state dict
            saved under the release's file name: its own resample)
  forward   the SiT's v output and each projector's output; our params written back (exact)
  loss      SILoss's denoising (per example) and projection losses, linear / cosine x uniform / lognormal
  samplers  euler (ODE), heun, euler_maruyama (linear and cosine), guidance on an interval only
  train     N iterations of train.py's update beside our jitted step (config.repa on, a latent dataset
            batch with the raw image: our step samples the posterior, runs the encoders and clips the
            gradient itself): the loss, params, EMA and the update itself. The elements whose Adam
            denominator sqrt(v) stays near eps get a row of their own (see ADAM_FLOOR)
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import os
import sys
import tempfile
import types
from contextlib import contextmanager
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.convert.dinov2_torch import weight_file_name
from dit_jax.convert.repa_torch import from_repa_torch, to_repa_torch
from dit_jax.models.dit import DiT, DiTConfig
from dit_jax.models.dinov2 import HUB_NAMES
from dit_jax.models.repa import PROJECTORS, Projectors, preprocess_raw_image
from dit_jax.parity.common import Row, compare, nchw, nhwc, randomize_zero_layers
from dit_jax.parity.dinov2 import randomize, state_dict_numpy
from dit_jax.parity.training import REFERENCE_OPTIM, force_label_drop

RESOLUTION = 256                              # REPA's image side: 32x32x4 latents, 16x16 tokens at patch 2
DEFAULT_ENCODERS = ("dinov2-vit-b", "dinov2-vit-s-reg")   # REPA's recipe (B), plus two encoders at once
GUIDANCE = (0.1, 0.7)                          # the guidance interval of the sampler rows: on for part of the grid
PROJ_COEFF, LATENT_SCALE = 0.5, 0.18215        # train.py's defaults
BREAKS = ("projector-block",)                  # deliberate mismatches (negative controls)
_MODULES = ("models", "loss", "samplers", "utils", "train", "dataset")


@dataclasses.dataclass
class RepaReference:
    sit: types.ModuleType        # models/sit.py
    loss: types.ModuleType       # loss.py (SILoss)
    samplers: types.ModuleType   # samplers.py
    train: types.ModuleType      # train.py (preprocess_raw_image, sample_posterior, update_ema)
    utils: types.ModuleType      # utils.py (load_encoders)
    dinov2: str                  # the dinov2 checkout's root (serves torch.hub.load)
    stubbed: tuple[str, ...]


def repa_encoder_name(name: str) -> str:
    """REPA's --enc-type for our encoder name: dinov2-vit-b -> dinov2-vit-b, dinov2-vit-s-reg -> dinov2reg-vit-s."""
    if name not in HUB_NAMES:
        raise ValueError(f"--repa-encoders: {name!r} is not a DINOv2 encoder; choose from {', '.join(HUB_NAMES)}")
    size = name.split("-")[2]
    return f"dinov2reg-vit-{size}" if name.endswith("-reg") else f"dinov2-vit-{size}"


def _stub_main_only_modules() -> list[str]:
    """Stub accelerate and wandb (train.py imports them for main(), never run here) when they are missing."""
    stubbed = []
    for name in ("accelerate", "wandb"):
        try:
            importlib.import_module(name)
        except ImportError:
            stubbed.append(name)
    if "accelerate" in stubbed:
        for sub in ("accelerate", "accelerate.logging", "accelerate.utils"):
            sys.modules[sub] = types.ModuleType(sub)
        sys.modules["accelerate"].Accelerator = None
        sys.modules["accelerate.logging"].get_logger = logging.getLogger
        sys.modules["accelerate.utils"].ProjectConfiguration = sys.modules["accelerate.utils"].set_seed = None
    if "wandb" in stubbed:
        sys.modules["wandb"] = types.ModuleType("wandb")
    return stubbed


def load_repa_reference(path: str, dinov2_path: str, log: Callable[[str], None] = lambda s: None) -> RepaReference:
    """REPA's modules from `path` under their own names (as the checkout imports them), then taken out of
    sys.modules again (another checkout's `models` may be loaded beside); `dinov2_path` serves the hub."""
    path, dinov2_root = os.path.abspath(path), os.path.abspath(dinov2_path)
    if not all(os.path.isfile(os.path.join(path, f)) for f in ("models/sit.py", "loss.py", "samplers.py", "train.py")):
        raise FileNotFoundError(f"{path} has no models/sit.py, loss.py, samplers.py and train.py: pass the root of a "
                                "sihyun-yu/REPA checkout")
    if not os.path.isfile(os.path.join(dinov2_root, "hubconf.py")):
        raise FileNotFoundError(f"{dinov2_root} has no hubconf.py: pass the root of a facebookresearch/dinov2 checkout")
    os.environ.setdefault("XFORMERS_DISABLED", "1")   # dinov2's plain PyTorch attention path
    try:
        importlib.import_module("diffusers.models")   # before any stub: diffusers probes for accelerate
    except ImportError:
        pass
    ours = lambda key: key.split(".")[0] in _MODULES  # noqa: E731
    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    for key in saved:
        del sys.modules[key]
    stubbed = _stub_main_only_modules()
    sys.path.insert(0, path)
    try:
        mods = [importlib.import_module(m) for m in ("models.sit", "loss", "samplers", "train", "utils")]
    except ImportError as e:
        raise ImportError(f"importing REPA's code failed ({e}); it needs timm (pip install timm), torchvision "
                          "and diffusers") from None
    finally:
        sys.path.remove(path)
        for key in [k for k in sys.modules if ours(k) or k.split(".")[0] in stubbed]:
            del sys.modules[key]
        sys.modules.update(saved)
    if stubbed:
        log(f"{' and '.join(stubbed)} not installed: stubbed while train.py was imported (only its main() uses them)")
    return RepaReference(*mods, dinov2=dinov2_root, stubbed=tuple(stubbed))


class Draws:
    """torch.rand / randn / randn_like return the queued arrays in order, shapes checked: the reference's
    random draws are ours, and the order in which REPA's code draws them is asserted."""

    def __init__(self, *queue):
        self.queue = list(queue)

    def _pop(self, kind, shape, dtype=None):
        import torch
        if not self.queue:
            raise AssertionError(f"REPA drew an unexpected torch.{kind}{tuple(shape)}")
        got_kind, value = self.queue.pop(0)
        if got_kind != kind or tuple(np.shape(value)) != tuple(shape):
            raise AssertionError(f"REPA draws {kind}{tuple(shape)} here, the comparison queued "
                                 f"{got_kind}{np.shape(value)}")
        return torch.from_numpy(np.ascontiguousarray(value)).to(dtype or torch.float32)

    def __enter__(self):
        import torch
        self.saved = torch.rand, torch.randn, torch.randn_like
        shape_of = lambda a: tuple(a[0]) if len(a) == 1 and isinstance(a[0], (tuple, list)) else tuple(a)  # noqa: E731
        torch.rand = lambda *a, **k: self._pop("rand", shape_of(a))
        torch.randn = lambda *a, **k: self._pop("randn", shape_of(a))
        torch.randn_like = lambda x, *a, **k: self._pop("randn", x.shape, x.dtype)
        return self

    def __exit__(self, *exc):
        import torch
        torch.rand, torch.randn, torch.randn_like = self.saved
        if exc[0] is None and self.queue:
            raise AssertionError(f"{len(self.queue)} queued draws unused: REPA drew fewer than expected")


@contextmanager
def dinov2_hub(root: str, seed: int, captured: list):
    """torch.hub.load('facebookresearch/dinov2', NAME) answered from the checkout's hubconf.py with random
    weights (pretrained=False, then every tensor randomised); each model's state dict, as built, is appended
    to `captured` as (hub name, numpy state dict)."""
    import torch
    original = torch.hub.load

    def load(repo_or_dir, model, *args, **kwargs):
        if repo_or_dir != "facebookresearch/dinov2":
            raise ValueError(f"the comparison serves only facebookresearch/dinov2 from the hub, not {repo_or_dir}")
        net = original(root, model, source="local", pretrained=False)
        randomize(net, seed + len(captured))
        captured.append((model, state_dict_numpy(net)))
        return net
    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original


def load_both_encoders(ref: RepaReference, names, seed: int, workdir: str):
    """(REPA's encoders from utils.load_encoders, REPA's encoder types, the release-named .pth files of the
    same random weights for ours): REPA's own loading path, the hub answered by the dinov2 checkout."""
    import torch
    captured: list = []
    with dinov2_hub(ref.dinov2, seed, captured), torch.no_grad():
        encoders, types_, _ = ref.utils.load_encoders(",".join(repa_encoder_name(n) for n in names), "cpu", RESOLUTION)
    files = []
    for name, (hub, sd) in zip(names, captured, strict=True):
        if hub != HUB_NAMES[name]:
            raise AssertionError(f"load_encoders asked the hub for {hub}, expected {HUB_NAMES[name]}")
        files.append(os.path.join(workdir, weight_file_name(name)))
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, files[-1])
    return encoders, types_, files


def reference_features(ref: RepaReference, encoders, encoder_types, images_nhwc: np.ndarray) -> list[np.ndarray]:
    """train.py's loop: preprocess_raw_image(raw_image, encoder_type), forward_features, x_norm_patchtokens."""
    import torch
    raw = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return [enc.forward_features(ref.train.preprocess_raw_image(raw, kind))["x_norm_patchtokens"].numpy()
                for enc, kind in zip(encoders, encoder_types)]


def encoder_rows(ref: RepaReference, encoders, encoder_types, run, *, batch: int, seed: int, tol: float) -> list[Row]:
    """REPA's preprocessing and each encoder's features on the same uint8 images (ours: the run's encoders)."""
    import torch
    from dit_jax.train import repa as repa_lib
    images = np.random.default_rng(seed).integers(0, 256, (batch, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    raw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    pre = nhwc(ref.train.preprocess_raw_image(raw, encoder_types[0]))
    rows = [compare(f"preprocess_raw_image {RESOLUTION} -> {pre.shape[1]} px", preprocess_raw_image(
        jnp.asarray(images), RESOLUTION), pre, tol)]
    ours = jax.jit(lambda p, x: repa_lib.encoder_features(run.repa, p, x))(run.encoder_params, jnp.asarray(images))
    theirs = reference_features(ref, encoders, encoder_types, images)
    for name, a, b in zip(run.repa.encoders, ours, theirs, strict=True):
        rows.append(compare(f"encoder {name} x_norm_patchtokens {tuple(b.shape[1:])}", a, b, tol))
    return rows


def reference_sit(ref: RepaReference, config: DiTConfig, z_dims, encoder_depth: int, projector_dim: int, seed: int):
    """REPA's SiT with `config`'s architecture (train.py's arguments: use_cfg, fused_attn on, qk_norm off), its
    zero-initialised tensors (adaLN, final layer, biases) randomised, and our params converted from it."""
    import torch
    torch.manual_seed(seed)
    net = ref.sit.SiT(path_type="linear", input_size=config.input_size, patch_size=config.patch_size,
                      in_channels=config.in_channels, hidden_size=config.hidden_size,
                      decoder_hidden_size=config.hidden_size, encoder_depth=encoder_depth, depth=config.depth,
                      num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                      class_dropout_prob=config.class_dropout_prob, num_classes=config.num_classes, use_cfg=True,
                      z_dims=list(z_dims), projector_dim=projector_dim, fused_attn=True, qk_norm=False)
    randomize_zero_layers(net, seed, std=0.05)
    params, _, got = from_repa_torch({k: v.detach().numpy() for k, v in net.state_dict().items()}, config)
    if tuple(got) != tuple(z_dims):
        raise AssertionError(f"converted projectors for z_dims {got}, expected {tuple(z_dims)}")
    return net, jax.tree.map(jnp.asarray, params)


def our_forward(config: DiTConfig, spec, params, x, t, y, *, train: bool = False, force_drop=None):
    """(v, projected tokens per encoder) of our DiT with REPA's projectors, as train/repa.py's loss_fn runs them."""
    dit = {k: v for k, v in params.items() if k != PROJECTORS}
    out, tokens = DiT(config).apply({"params": dit}, x, t, y, train=train, force_drop=force_drop,
                                    capture_depth=spec.encoder_depth, rngs={"dropout": jax.random.key(0)})
    return out, Projectors(spec.projector_dim, spec.z_dims).apply({"params": params[PROJECTORS]}, tokens)


def forward_rows(net, params, config: DiTConfig, spec, *, batch: int, seed: int, tol: float) -> list[Row]:
    """REPA's SiT forward (eval mode: no label dropout) and its projector outputs; the conversion back."""
    import torch
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, config.input_size, config.input_size, config.in_channels)).astype(np.float32)
    t = rng.random(batch).astype(np.float32)
    y = rng.integers(0, config.num_classes, batch)
    net.eval()
    with torch.no_grad():
        v, zs = net(nchw(x), torch.from_numpy(t), torch.from_numpy(y))
    out, zs_tilde = jax.jit(lambda p, x, t, y: our_forward(config, spec, p, x, t, y))(
        params, jnp.asarray(x), jnp.asarray(t), jnp.asarray(y, jnp.int32))
    rows = [compare("SiT forward v", out, nhwc(v), tol)]
    rows += [compare(f"projector {i} (z_dim {z.shape[-1]}) after block {spec.encoder_depth}", a, z.numpy(), tol)
             for i, (a, z) in enumerate(zip(zs_tilde, zs, strict=True))]
    back = to_repa_torch(jax.tree.map(np.asarray, params), config)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    if set(back) != set(sd):
        raise AssertionError(f"written-back names differ: {sorted(set(back) ^ set(sd))[:4]}")
    rows.append(Row("params written back (max over tensors)", max(float(np.max(np.abs(back[k] - sd[k]))) for k in sd),
                    max(float(np.max(np.abs(back[k] - sd[k]))) for k in sd), 0.0))
    return rows


def loss_rows(ref: RepaReference, net, params, config: DiTConfig, spec, *, batch: int, seed: int,
              tol: float) -> list[Row]:
    """SILoss beside train/repa.py's loss_fn, for each path x weighting, on the same x, zs, draws and label
    drops (REPA draws t (or its normal), then the noise; the model's label dropout gets our mask)."""
    import torch
    from dit_jax.train.repa import loss_fn
    from dit_jax.transport.repa import lognormal_time
    rows, rng = [], np.random.default_rng(seed + 2)
    shape = (batch, config.input_size, config.input_size, config.in_channels)
    net.train()
    for path in ("linear", "cosine"):
        for weighting in ("uniform", "lognormal"):
            x = (rng.standard_normal(shape) * 0.8).astype(np.float32)
            y, drop = rng.integers(0, config.num_classes, batch), rng.random(batch) < 0.5
            u = (rng.random(batch) if weighting == "uniform" else rng.standard_normal(batch)).astype(np.float32)
            noise = rng.standard_normal(shape).astype(np.float32)
            zs = [rng.standard_normal((batch, config.num_tokens, z)).astype(np.float32) for z in spec.z_dims]
            force_label_drop(net.y_embedder, drop)
            siloss = ref.loss.SILoss(prediction="v", path_type=path, weighting=weighting)
            with torch.no_grad(), Draws(("rand" if weighting == "uniform" else "randn", u.reshape(batch, 1, 1, 1)),
                                        ("randn", nchw(noise).numpy())):
                d, p = siloss(net, nchw(x), dict(y=torch.from_numpy(y)), zs=[torch.from_numpy(z) for z in zs])
            t = u if weighting == "uniform" else np.asarray(lognormal_time(jnp.asarray(u), path))
            s = dataclasses.replace(spec, path=path, weighting=weighting)
            total, terms = jax.jit(lambda p_, t_: loss_fn(
                p_, model=DiT(config), spec=s, x0=jnp.asarray(x), y=jnp.asarray(y, jnp.int32), t=t_,
                noise=jnp.asarray(noise), zs=[jnp.asarray(z) for z in zs], force_drop=jnp.asarray(drop),
                drop_key=jax.random.key(0)))(params, jnp.asarray(t))
            name = f"SILoss {path}/{weighting}"
            rows += [compare(f"{name} denoising (per example)", terms["denoise_loss"], d.numpy(), tol),
                     compare(f"{name} projection", terms["proj_loss"], p.numpy(), tol),
                     compare(f"{name} total", total, (d.mean() + PROJ_COEFF * p.mean()).numpy(), tol)]
    del net.y_embedder.token_drop   # the class's own method again
    net.eval()
    return rows


SAMPLERS = (("euler", "linear"), ("heun", "linear"), ("sde", "linear"), ("sde", "cosine"))


def _our_sampler(kind: str, path: str, config: DiTConfig, params, x_T, y, noise, **kw) -> np.ndarray:
    from dit_jax.transport import repa_samplers as rs
    dit = {k: v for k, v in params.items() if k != PROJECTORS}
    fn = lambda x, t, y_: DiT(config).apply({"params": dit}, x, t, y_)  # noqa: E731
    with jax.enable_x64(True):   # REPA keeps the sampler's state in float64
        if kind == "sde":
            out = rs.euler_maruyama_sampler(fn, jnp.asarray(x_T), jnp.asarray(y), noise=jnp.asarray(noise), path=path,
                                            null_label=config.num_classes, **kw)
        else:
            out = rs.euler_sampler(fn, jnp.asarray(x_T), jnp.asarray(y), heun=kind == "heun",
                                   null_label=config.num_classes, **kw)
        return np.asarray(out, np.float64)


def sampler_rows(ref: RepaReference, net, params, config: DiTConfig, *, batch: int, steps: int, cfg_scale: float,
                 seed: int, tol: float) -> list[Row]:
    """samplers.py's euler_sampler (ODE, and heun=True) and euler_maruyama_sampler (linear and cosine paths)
    from the same x_T, the SDE fed the same per-step noise, guidance only on GUIDANCE."""
    import torch
    if config.num_classes != 1000:
        raise ValueError(f"REPA's samplers hard-code the null label 1000: compare with --num-classes 1000, "
                         f"not {config.num_classes}")
    rng = np.random.default_rng(seed + 3)
    x_T = rng.standard_normal((batch, config.input_size, config.input_size, config.in_channels)).astype(np.float32)
    y = rng.integers(0, config.num_classes, batch)
    noise = rng.standard_normal((steps - 1,) + x_T.shape)
    kw = dict(num_steps=steps, cfg_scale=cfg_scale, guidance_low=GUIDANCE[0], guidance_high=GUIDANCE[1])
    net.eval()
    rows = []
    for kind, path in SAMPLERS:
        if kind == "sde":
            with Draws(*[("randn", n.transpose(0, 3, 1, 2)) for n in noise]):
                want = ref.samplers.euler_maruyama_sampler(net, nchw(x_T), torch.from_numpy(y), path_type=path, **kw)
        else:
            want = ref.samplers.euler_sampler(net, nchw(x_T), torch.from_numpy(y), heun=kind == "heun", **kw)
        got = _our_sampler(kind, path, config, params, x_T, y, noise, **kw)
        name = {"euler": "Euler ODE", "heun": "Heun ODE", "sde": f"Euler-Maruyama SDE ({path})"}[kind]
        rows.append(compare(f"{name}, {steps} steps, cfg {cfg_scale} on {list(GUIDANCE)}", got, nhwc(want), tol))
    return rows


def our_run(config: DiTConfig, names, files, encoder_depth: int, projector_dim: int, seed: int):
    """Our run with config.repa on, as a user switches it on (the encoders loaded from `files` by
    train/repa.py), on one device with train.py's recipe: AdamW lr 1e-4 without weight decay, gradient-norm
    clip 1.0, EMA 0.9999; a latent dataset (posterior mean/std + the raw image) at RESOLUTION px."""
    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.run import config_for_model, make_run
    from dit_jax.train.repa import attach
    rc = config_for_model(config)
    rc.data.latents = "dataset"   # the step samples the posterior and runs the encoders on the record's image
    rc.optim.update(REFERENCE_OPTIM)
    rc.optim.grad_clip = 1.0
    rc.update(ema_decay=0.9999, seed=seed)
    rc.data.update(image_size=RESOLUTION, latent_scale=LATENT_SCALE)
    rc.repa.update(encoder=",".join(names), weights=",".join(files), encoder_depth=encoder_depth,
                   projector_dim=projector_dim, proj_coeff=PROJ_COEFF, path="linear", weighting="uniform")
    return attach(make_run(rc, vae=None, mesh=make_mesh(devices=jax.devices()[:1])), "load")


def _moving(sd: dict, config: DiTConfig) -> np.ndarray:
    """Every trained tensor but pos_embed, in name order, flat. The attention's key bias is left out: its
    gradient is exactly zero (softmax ignores a shift shared by all keys), so both sides' Adam turns rounding
    noise into +-lr steps there."""
    h = config.hidden_size
    return np.concatenate([np.delete(np.asarray(sd[k]), np.s_[h:2 * h]) if k.endswith("qkv.bias")
                           else np.asarray(sd[k]).ravel() for k in sorted(sd) if k != "pos_embed"])


def _reference_iteration(ref: RepaReference, net, ema, opt, encoders, encoder_types, b: dict) -> tuple[float, float]:
    """One iteration of train.py's loop body (single process, float32), its draws given: (loss, grad norm)."""
    import torch
    moments = torch.cat([nchw(b["mean"].astype(np.float32)), nchw(b["std"].astype(np.float32))], dim=1)
    with torch.no_grad(), Draws(("randn", b["eps"].transpose(0, 3, 1, 2))):
        x = ref.train.sample_posterior(moments, latents_scale=torch.full((1, 4, 1, 1), LATENT_SCALE),
                                       latents_bias=torch.zeros((1, 4, 1, 1)))
    zs = [torch.from_numpy(z) for z in reference_features(ref, encoders, encoder_types, b["image"])]
    force_label_drop(net.y_embedder, b["drop"])   # the model's label dropout (cfg_prob 0.1) draws our mask
    siloss = ref.loss.SILoss(prediction="v", path_type="linear", weighting="uniform")
    with Draws(("rand", b["t"].reshape(-1, 1, 1, 1)), ("randn", nchw(b["noise"]).numpy())):
        loss, proj_loss = siloss(net, x, dict(y=torch.from_numpy(b["label"]).long()), zs=zs)
    loss = loss.mean() + proj_loss.mean() * PROJ_COEFF
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)   # accelerator.clip_grad_norm_, one process
    opt.step()
    opt.zero_grad(set_to_none=True)
    ref.train.update_ema(ema, net)
    return float(loss.detach()), float(norm)


def training_rows(ref: RepaReference, net, params, config: DiTConfig, run, encoders, encoder_types, *, steps: int,
                  batch: int, seed: int, tol: float, update_tol: float = 2e-3,
                  log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """`steps` iterations of train.py's update beside our jitted step on the same records (posterior mean/std
    in float16 as a latent dataset stores them, the uint8 image), our step's posterior draw given to REPA's
    sample_posterior, and REPA's t, noise and label drops given to ours."""
    import torch
    from dit_jax.train.programs import build_train_step, vae_argument
    from dit_jax.train.step import step_keys
    program, frozen = build_train_step(run), vae_argument(run)
    state = program.init(params)
    ema = copy.deepcopy(net).requires_grad_(False)   # train.py: deepcopy, requires_grad(ema, False), decay-0 sync
    ref.train.update_ema(ema, net, decay=0)
    net.train()
    ema.eval()
    opt = torch.optim.AdamW(net.parameters(), lr=REFERENCE_OPTIM["lr"], betas=(0.9, 0.999), weight_decay=0.0,
                            eps=1e-8)
    start = _moving({k: v.detach().numpy().copy() for k, v in net.state_dict().items()}, config)
    rng, rows, norms = np.random.default_rng(seed + 4), [], []
    shape = (batch, config.input_size, config.input_size, config.in_channels)
    for k in range(steps):
        b = dict(image=rng.integers(0, 256, (batch, RESOLUTION, RESOLUTION, 3), dtype=np.uint8),
                 mean=(rng.standard_normal(shape) * 3).astype(np.float16),
                 std=rng.uniform(0.05, 0.5, shape).astype(np.float16),
                 label=rng.integers(0, config.num_classes, batch).astype(np.int32),
                 drop=rng.random(batch) < config.class_dropout_prob, t=rng.random(batch).astype(np.float32),
                 noise=rng.standard_normal(shape).astype(np.float32))
        b["drop"][-1] |= k == 0   # a dropped label is exercised
        b["eps"] = np.asarray(jax.random.normal(step_keys(state.rng, state.step)[3], shape, jnp.float32))
        loss, norm = _reference_iteration(ref, net, ema, opt, encoders, encoder_types, b)
        norms.append(norm)
        batch_ = {key: b[key] for key in ("mean", "std", "image", "label")}
        batch_["draws"] = {key: b[key] for key in ("t", "noise", "drop")}
        state, metrics = program.step(state, jax.tree.map(jnp.asarray, batch_), frozen)
        log(f"train step {k + 1}: loss ours {float(metrics['loss']):.7f} REPA {loss:.7f} (grad norm {norm:.3f})")
        rows.append(compare(f"train step {k + 1} loss", metrics["loss"], loss, tol))
    return _parameter_rows(rows, net, ema, opt, state, start, norms, config, steps=steps, tol=tol,
                           update_tol=update_tol)


def _parameter_rows(rows, net, ema, opt, state, start, norms, config: DiTConfig, *, steps: int, tol: float,
                    update_tol: float) -> list[Row]:
    """The final params, EMA and update rows, the elements whose Adam denominator is near eps apart."""
    sd = lambda m: {k: v.detach().numpy() for k, v in m.state_dict().items()}  # noqa: E731
    ours_sd = to_repa_torch(jax.device_get(state.params), config)
    ours, ours_ema = _moving(ours_sd, config), _moving(to_repa_torch(jax.device_get(state.ema_params), config), config)
    theirs, theirs_ema = _moving(sd(net), config), _moving(sd(ema), config)
    denominators = _moving(adam_denominators(net, opt, steps), config)
    sure, near_eps = denominators >= ADAM_FLOOR, int(np.sum((denominators > 0) & (denominators < ADAM_FLOOR)))
    clipped, lr, top = sum(n > 1.0 for n in norms), REFERENCE_OPTIM["lr"], float(np.max(np.abs(theirs)))
    rest = float(np.max(np.abs(ours - theirs)[~sure], initial=0.0))
    return rows + [
        compare(f"params after {steps} steps ({clipped} clipped)", ours[sure], theirs[sure], tol),
        Row(f"params with 0 < Adam sqrt(v) < {ADAM_FLOOR:.0e} ({near_eps} of {sure.size})", rest, rest / top,
            steps * lr / top),
        compare(f"EMA after {steps} steps", ours_ema, theirs_ema, tol),
        compare(f"update over {steps} steps (params - start)", (ours - start)[sure], (theirs - start)[sure],
                update_tol)]


# Adam's step is lr * m / (sqrt(v) + eps): where sqrt(v) is near eps (1e-8; a gradient that is almost zero, e.g.
# a label row seen once with cancelling terms) float32 rounding of the gradient moves the weight by up to lr. Those
# elements (counted) are bounded by steps x lr in their own row; the others are held to the float32 tolerance.
ADAM_FLOOR = 1e-6


def adam_denominators(net, opt, steps: int) -> dict[str, np.ndarray]:
    """sqrt of the bias-corrected second moment of REPA's AdamW per tensor (zero for a tensor never stepped)."""
    beta2 = opt.param_groups[0]["betas"][1]
    out = {}
    for name, p in net.named_parameters():
        state = opt.state.get(p, {})
        v = state["exp_avg_sq"].detach().numpy() / (1 - beta2 ** steps) if "exp_avg_sq" in state else None
        out[name] = np.zeros(tuple(p.shape), np.float32) if v is None else np.sqrt(v)
    return out


PARTS = ("encoder", "forward", "loss", "samplers", "train")


def run_repa_comparison(ref: RepaReference, config: DiTConfig, *, encoders=DEFAULT_ENCODERS, encoder_depth: int = 2,
                        projector_dim: int = 2048, batch: int = 4, steps: int = 6, train_steps: int = 5,
                        cfg_scale: float = 1.5, seed: int = 0, tol: float = 1e-5, breaks=(), parts=PARTS,
                        log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Every row family in `parts` (see the module docstring); `breaks` (from BREAKS) makes ours wrong on
    purpose: "projector-block" reads the tokens one block after REPA's encoder_depth."""
    unknown = sorted(set(breaks) - set(BREAKS)) + sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown break or part {unknown}: breaks {BREAKS}, parts {PARTS}")
    if not 1 <= encoder_depth < config.depth:
        raise ValueError(f"encoder depth {encoder_depth} must be in [1, depth {config.depth})")
    ours_depth = encoder_depth + ("projector-block" in breaks)
    with tempfile.TemporaryDirectory() as workdir:
        torch_encoders, encoder_types, files = load_both_encoders(ref, encoders, seed, workdir)
        run = our_run(config, encoders, files, ours_depth, projector_dim, seed)
    z_dims = tuple(int(e.embed_dim) for e in torch_encoders)
    if z_dims != run.repa.z_dims:
        raise AssertionError(f"REPA's encoders give z_dims {z_dims}, ours {run.repa.z_dims}")
    net, params = reference_sit(ref, config, z_dims, encoder_depth, projector_dim, seed)
    log(f"encoders {', '.join(encoders)} (REPA: {', '.join(encoder_types)}), z_dims {z_dims}; projectors after block "
        f"{encoder_depth}" + (f" (ours after block {ours_depth}: --break projector-block)" if breaks else ""))
    rows = []
    if "encoder" in parts:
        rows += encoder_rows(ref, torch_encoders, encoder_types, run, batch=min(batch, 2), seed=seed, tol=tol)
        log("encoder rows: done")
    if "forward" in parts:
        rows += forward_rows(net, params, config, run.repa, batch=batch, seed=seed, tol=tol)
    if "loss" in parts:
        rows += loss_rows(ref, net, params, config, run.repa, batch=batch, seed=seed, tol=tol)
        log("forward and loss rows: done")
    if "samplers" in parts:
        rows += sampler_rows(ref, net, params, config, batch=batch, steps=steps, cfg_scale=cfg_scale, seed=seed,
                             tol=tol)
        log("sampler rows: done")
    if "train" in parts and train_steps:
        rows += training_rows(ref, net, params, config, run, torch_encoders, encoder_types, steps=train_steps,
                              batch=batch, seed=seed, tol=tol, log=log)
    return rows
