"""Side-by-side comparison with the PyTorch reference (official `models.py` + `diffusion`).

Both sides get the same weights (random ones with the zero-initialised layers randomised too, or
a given checkpoint), the same inputs and the same noise; each row reports the largest absolute
difference and the relative error max|ours - ref| / max|ref|. Used by tools/compare_torch.py and
by the parity tests (with the PyTorch statement in tests/torch_reference standing in).
"""

from __future__ import annotations

import dataclasses
import types
from contextlib import contextmanager
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.convert.dit_torch import from_torch
from dit_jax.diffusion.gaussian import create_diffusion
from dit_jax.diffusion.ancestral import ddim_sample, forward_with_cfg, p_sample
from dit_jax.models.dit import DiT, DiTConfig


@dataclasses.dataclass
class Row:
    name: str
    max_abs: float
    rel: float
    tol: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rel) and self.rel <= self.tol)


def compare(name: str, ours, ref, tol: float) -> Row:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"{name}: shapes differ, ours {ours.shape} vs reference {ref.shape}")
    diff = float(np.max(np.abs(ours - ref)))
    return Row(name, diff, diff / max(float(np.max(np.abs(ref))), 1e-30), tol)


def format_table(rows: list[Row]) -> str:
    w = max([38] + [len(r.name) for r in rows])
    lines = [f"{'quantity':<{w}} {'max abs diff':>13} {'rel diff':>10} {'tolerance':>10}  result",
             "-" * (w + 44)]
    for r in rows:
        lines.append(f"{r.name:<{w}} {r.max_abs:>13.3e} {r.rel:>10.2e} {r.tol:>10.0e}  {'ok' if r.ok else 'FAIL'}")
    return "\n".join(lines)


def torch_model(models: types.ModuleType, config: DiTConfig):
    """The reference DiT built with the same architecture as `config`."""
    return models.DiT(input_size=config.input_size, patch_size=config.patch_size, in_channels=config.in_channels,
                      hidden_size=config.hidden_size, depth=config.depth, num_heads=config.num_heads,
                      mlp_ratio=config.mlp_ratio, class_dropout_prob=config.class_dropout_prob,
                      num_classes=config.num_classes, learn_sigma=config.learn_sigma)


def randomize_zero_layers(model, seed: int = 0, std: float = 0.02) -> int:
    """Fill every all-zero parameter (adaLN, final layer, biases) with N(0, std): with them at zero
    the blocks are identities and a comparison would prove little. Returns how many were filled."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    filled = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed" and not torch.any(p != 0):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
                filled += 1
    return filled


@contextmanager
def fixed_randn_like(noise_nchw):
    """Make the reference's `torch.randn_like` return the given noise (identical noise per step)."""
    import torch
    original = torch.randn_like
    torch.randn_like = lambda x, *a, **k: noise_nchw.to(dtype=x.dtype).clone()
    try:
        yield
    finally:
        torch.randn_like = original


def nchw(x):
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def reference_and_ours(models, config: DiTConfig, state_dict: dict | None, seed: int, log: Callable[[str], None]):
    """(the reference's DiT in eval mode, our DiT with its blocks unrolled, our params converted from the
    reference's): from `state_dict` when given, else the reference's random init with its zero-initialised
    layers randomised (so that the comparison sees every weight)."""
    import torch
    torch.manual_seed(seed)
    ref = torch_model(models, config).eval()
    if state_dict is not None:
        ref.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
    else:
        log(f"random weights; {randomize_zero_layers(ref, seed)} zero-initialised tensors randomised")
    params, _ = from_torch({k: v.detach().numpy() for k, v in ref.state_dict().items()}, config)
    return ref, DiT(dataclasses.replace(config, scan_blocks=False)), params


def run_comparison(models: types.ModuleType, diffusion_pkg: types.ModuleType, config: DiTConfig, *,
                   state_dict: dict | None = None, batch: int = 4, sample_steps: int = 5, respacing: str = "250",
                   cfg_scale: float = 1.5, seed: int = 0, tol: float = 1e-5, loss_tol: float = 5e-5,
                   sample_tol: float = 1e-4, t0_extreme_tol: float = 2e-3,
                   log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Compare forward, guided forward, training loss terms and sampling steps. Returns rows.

    The loss terms get their own tolerance: the t = 0 decoder NLL takes logs of differences of
    CDFs, which amplifies float32 rounding; a sampling chain accumulates it over steps. With
    pixels far (5 to 10 std) from the predicted mean, those CDFs differ from 1 by a few ulps and
    the reference's value hangs on how its tanh rounds there: PyTorch on CPU calls MKL's vsTanh,
    which is faithfully but not correctly rounded and cannot be reproduced in XLA; ours is
    correctly rounded there (`rounded_tanh`). That row gets `t0_extreme_tol`.
    """
    import torch
    ref, ours, params = reference_and_ours(models, config, state_dict, seed, log)

    def apply(x, t, y, force_drop=None):
        return ours.apply({"params": params}, x, t, y, force_drop=force_drop)
    apply = jax.jit(apply)

    rng = np.random.default_rng(seed)
    shape = (batch, config.input_size, config.input_size, config.in_channels)
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, 1000, batch).astype(np.int64)
    t[0] = 0  # the decoder-NLL branch of the loss
    y = rng.integers(0, config.num_classes, batch).astype(np.int64)
    drop = np.arange(batch) % 2 == 1
    null = config.num_classes
    rows = []
    with torch.no_grad():
        tt, ty = torch.from_numpy(t), torch.from_numpy(y)
        rows.append(compare("forward", apply(x, t, y), nhwc(ref(nchw(x), tt, ty)), tol))
        y_dropped = torch.from_numpy(np.where(drop, null, y))
        rows.append(compare("forward, forced label drop", apply(x, t, y, jnp.asarray(drop)),
                            nhwc(ref(nchw(x), tt, y_dropped)), tol))
        # Guided forward: batch [x; x] with labels [y; null], the reference's 3-channel quirk.
        x2, t2, y2 = np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([y, np.full_like(y, null)])
        cfg_fn = forward_with_cfg(apply, cfg_scale, min(3, config.in_channels))
        guided = cfg_fn(x2, t2, y2)
        rows.append(compare(f"guided forward (cfg {cfg_scale})", guided,
                            nhwc(ref.forward_with_cfg(nchw(x2), torch.from_numpy(t2), torch.from_numpy(y2),
                                                      cfg_scale)), tol))

        # Training loss terms for fixed x0, t, noise.
        x0 = np.clip(rng.standard_normal(shape), -1.2, 1.2).astype(np.float32)
        noise = rng.standard_normal(shape).astype(np.float32)
        ref_d = diffusion_pkg.create_diffusion("", learn_sigma=config.learn_sigma)
        our_d = create_diffusion("", learn_sigma=config.learn_sigma)
        ref_terms = ref_d.training_losses(ref, nchw(x0), tt, model_kwargs=dict(y=ty), noise=nchw(noise))
        our_terms = jax.jit(lambda: our_d.training_losses(lambda xt, tm: apply(xt, tm, y), x0, jnp.asarray(t),
                                                          noise))()
        for k in ("loss", "mse", "vb"):
            if k in ref_terms:
                rows.append(compare(f"training loss term '{k}'", our_terms[k], ref_terms[k].numpy(), loss_tol))

        # The t = 0 decoder term alone: pixels near the predicted mean, then far from it (the
        # noise scaled by 8 puts most pixels 5 to 20 std from the mean, the CDFs near 0 or 1).
        if config.learn_sigma:
            t0 = np.zeros_like(t)
            for label, scale, row_tol in (("typical", 1.0, loss_tol), ("extreme", 8.0, t0_extreme_tol)):
                n0 = noise * np.float32(scale)
                ref_vb = ref_d.training_losses(ref, nchw(x0), torch.from_numpy(t0), model_kwargs=dict(y=ty),
                                               noise=nchw(n0))["vb"]
                our_vb = jax.jit(lambda n: our_d.training_losses(lambda xt, tm: apply(xt, tm, y), x0,
                                                                 jnp.asarray(t0), n)["vb"])(n0)
                rows.append(compare(f"t = 0 decoder term, {label} pixels", our_vb, ref_vb.numpy(), row_tol))

        # Sampling steps with identical noise, from the top of a respaced chain.
        ref_d, our_d = (diffusion_pkg.create_diffusion(respacing, learn_sigma=config.learn_sigma),
                        create_diffusion(respacing, learn_sigma=config.learn_sigma))
        step_noise = [rng.standard_normal(shape).astype(np.float32) for _ in range(sample_steps)]
        for sampler in ("ddpm", "ddim"):
            x_ref, x_ours = nchw(x), jnp.asarray(x)
            for k in range(sample_steps):
                i = our_d.num_timesteps - 1 - k
                ti = np.full((batch,), i, np.int64)
                model_fn = lambda xt, tm: apply(xt, tm, y)  # noqa: E731
                if sampler == "ddpm":
                    x_ours, _ = p_sample(our_d, model_fn, x_ours, jnp.asarray(ti), jnp.asarray(step_noise[k]),
                                         clip_denoised=False)
                    with fixed_randn_like(nchw(step_noise[k])):
                        x_ref = ref_d.p_sample(ref, x_ref, torch.from_numpy(ti), clip_denoised=False,
                                               model_kwargs=dict(y=ty))["sample"]
                else:
                    x_ours, _ = ddim_sample(our_d, model_fn, x_ours, jnp.asarray(ti), jnp.asarray(step_noise[k]),
                                            clip_denoised=False)
                    with fixed_randn_like(nchw(step_noise[k])):
                        x_ref = ref_d.ddim_sample(ref, x_ref, torch.from_numpy(ti), clip_denoised=False,
                                                  model_kwargs=dict(y=ty))["sample"]
            rows.append(compare(f"{sample_steps} {sampler} steps ('{respacing}')", x_ours, nhwc(x_ref), sample_tol))

        # Guided ancestral steps as in the reference's sample.py (doubled batch, cfg on 3 channels).
        x_ref, x_ours = nchw(x2), jnp.asarray(x2)
        for k in range(sample_steps):
            i = our_d.num_timesteps - 1 - k
            ti = np.full((2 * batch,), i, np.int64)
            n2 = np.concatenate([step_noise[k], step_noise[k]])
            x_ours, _ = p_sample(our_d, lambda xt, tm: cfg_fn(xt, tm, y2), x_ours, jnp.asarray(ti), jnp.asarray(n2),
                                 clip_denoised=False)
            with fixed_randn_like(nchw(n2)):
                x_ref = ref_d.p_sample(ref.forward_with_cfg, x_ref, torch.from_numpy(ti), clip_denoised=False,
                                       model_kwargs=dict(y=torch.from_numpy(y2), cfg_scale=cfg_scale))["sample"]
        rows.append(compare(f"{sample_steps} guided ddpm steps (cfg {cfg_scale})", x_ours[:batch],
                            nhwc(x_ref)[:batch], sample_tol))
    return rows


REFERENCE_OPTIM = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0, grad_clip=0.0)


def _flat_official(params, config: DiTConfig) -> np.ndarray:
    from dit_jax.convert.dit_torch import to_torch
    sd = to_torch(jax.device_get(params), config)
    return np.concatenate([sd[k].ravel() for k in sorted(sd) if k != "pos_embed"])


def _flat_torch(module) -> np.ndarray:
    sd = module.state_dict()
    return np.concatenate([sd[k].detach().numpy().ravel() for k in sorted(sd) if k != "pos_embed"])


def run_training_comparison(models: types.ModuleType, diffusion_pkg: types.ModuleType, config: DiTConfig, *,
                            steps: int = 5, state_dict: dict | None = None, batch: int = 4, seed: int = 0,
                            ema_decay: float = 0.9999, loss_tol: float = 1e-5, param_tol: float = 5e-5,
                            log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """N steps of the reference's update (train.py) beside our jitted `train_step`. Returns rows.

    Reference: `training_losses(model, x, t, y, noise)["loss"].mean()`, backward,
    `torch.optim.AdamW(lr=1e-4, weight_decay=0)`, EMA `ema = decay * ema + (1 - decay) * param`
    after each step, label dropout in train mode. Both sides start from the same weights and get
    the same batches, timesteps, noise and label-drop mask each step (the reference's
    `token_drop` is given the mask; ours gets it in the batch's 'draws'). Rows: the loss
    of every step, then the final params and EMA (max over all tensors, relative to the largest
    reference value). The params get their own tolerance: each Adam step moves a weight by about
    lr * g / (|g| + eps), which for gradients near eps turns float32 rounding into up to lr.
    """
    import torch

    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.train.programs import build_train_step
    from dit_jax.run import config_for_model, make_run

    cfg = dataclasses.replace(config, scan_blocks=False)
    torch.manual_seed(seed)
    ref = torch_model(models, cfg)
    if state_dict is not None:
        ref.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
    else:
        log(f"random weights; {randomize_zero_layers(ref, seed)} zero-initialised tensors randomised")
    params, _ = from_torch(ref.state_dict(), cfg)
    ref_ema = torch_model(models, cfg)
    ref_ema.load_state_dict(ref.state_dict())
    ref_ema.requires_grad_(False)
    ref.train()
    opt = torch.optim.AdamW(ref.parameters(), lr=REFERENCE_OPTIM["lr"], weight_decay=0)
    ref_d = diffusion_pkg.create_diffusion("", learn_sigma=cfg.learn_sigma)

    # The training run's own step (train/programs.py) on one device, with the reference's recipe.
    config = config_for_model(cfg)
    config.optim.update(REFERENCE_OPTIM)
    config.update(ema_decay=ema_decay, seed=seed)
    config.data.latents = ""  # x0 given as it is, as the reference's training_losses takes it
    program = build_train_step(make_run(config, vae=None, mesh=make_mesh(devices=jax.devices()[:1])))
    state = program.init(jax.tree.map(jnp.asarray, params))

    rng = np.random.default_rng(seed)
    shape = (batch, cfg.input_size, cfg.input_size, cfg.in_channels)
    rows = []
    for k in range(steps):
        x0 = np.clip(rng.standard_normal(shape) * 0.5, -1, 1).astype(np.float32)
        y = rng.integers(0, cfg.num_classes, batch).astype(np.int64)
        t = rng.integers(0, 1000, batch).astype(np.int64)
        noise = rng.standard_normal(shape).astype(np.float32)
        drop = rng.random(batch) < cfg.class_dropout_prob
        if k == 0:  # make sure the decoder-NLL branch and a dropped label are exercised
            t[0], drop[-1] = 0, True

        mask = torch.from_numpy(drop)
        ref.y_embedder.token_drop = lambda labels, force_drop_ids=None: torch.where(
            mask, ref.y_embedder.num_classes, labels)
        ref_loss = ref_d.training_losses(ref, nchw(x0), torch.from_numpy(t), model_kwargs=dict(
            y=torch.from_numpy(y)), noise=nchw(noise))["loss"].mean()
        opt.zero_grad()
        ref_loss.backward()
        opt.step()
        with torch.no_grad():
            ema_sd, sd = ref_ema.state_dict(), ref.state_dict()
            for name in ema_sd:
                if name != "pos_embed":
                    ema_sd[name].mul_(ema_decay).add_(sd[name], alpha=1 - ema_decay)

        draws = {"t": jnp.asarray(t, jnp.int32), "noise": jnp.asarray(noise), "drop": jnp.asarray(drop)}
        state, metrics = program.step(state, {"image": jnp.asarray(x0), "label": jnp.asarray(y, jnp.int32),
                                              "draws": draws}, None)
        row = compare(f"step {k + 1} loss", metrics["loss"], ref_loss.detach().numpy(), loss_tol)
        log(f"step {k + 1}: loss ours {float(metrics['loss']):.7f} reference {ref_loss.item():.7f}")
        rows.append(row)
    rows.append(compare(f"params after {steps} steps", _flat_official(state.params, cfg), _flat_torch(ref),
                        param_tol))
    rows.append(compare(f"EMA after {steps} steps", _flat_official(state.ema_params, cfg), _flat_torch(ref_ema),
                        param_tol))
    return rows
