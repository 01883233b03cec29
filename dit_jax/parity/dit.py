"""Side-by-side comparison with DiT's PyTorch code (official `models.py` + `diffusion`, or the
statement of it in tests/torch_reference): forward, guided forward, training loss terms, sampling
steps (`run_comparison`) and N training steps (`run_training_comparison`, on parity/training.py).
Rows and the shared set-up: parity/common.py.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.gaussian import create_diffusion
from dit_jax.diffusion.ancestral import ddim_sample, forward_with_cfg, p_sample
from dit_jax.models.dit import DiTConfig
from dit_jax.parity.common import Row, compare, fixed_randn_like, nchw, nhwc, reference_and_ours, torch_model
from dit_jax.parity.training import compare_training, flat_torch, force_label_drop, our_program, reference_optimizer


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

    rng = np.random.default_rng(seed)
    shape = (batch, config.input_size, config.input_size, config.in_channels)
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, 1000, batch).astype(np.int64)
    t[0] = 0  # the decoder-NLL branch of the loss
    y = rng.integers(0, config.num_classes, batch).astype(np.int64)
    side = _Sides(ref, jax.jit(apply), config, rng, shape, x, t, y)
    with torch.no_grad():
        rows, cfg_fn = _forward_rows(side, cfg_scale, tol)
        rows += _loss_rows(side, diffusion_pkg, loss_tol, t0_extreme_tol)
        rows += _sampling_rows(side, diffusion_pkg, respacing, sample_steps, cfg_fn, cfg_scale, sample_tol)
    return rows


@dataclasses.dataclass
class _Sides:
    """The two models and the inputs every row of run_comparison uses (rng: the draws still to come)."""
    ref: object
    apply: Callable
    config: DiTConfig
    rng: np.random.Generator
    shape: tuple
    x: np.ndarray
    t: np.ndarray
    y: np.ndarray


def _forward_rows(side: _Sides, cfg_scale: float, tol: float):
    """(rows of the forward, with labels dropped, and guided; our guided model function)."""
    import torch
    ref, apply, x, t, y, config = side.ref, side.apply, side.x, side.t, side.y, side.config
    batch, null = len(y), config.num_classes
    drop = np.arange(batch) % 2 == 1
    tt, ty = torch.from_numpy(t), torch.from_numpy(y)
    rows = [compare("forward", apply(x, t, y), nhwc(ref(nchw(x), tt, ty)), tol)]
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
    return rows, cfg_fn


def _loss_rows(side: _Sides, diffusion_pkg, loss_tol: float, t0_extreme_tol: float) -> list[Row]:
    """The training loss terms for fixed x0, t, noise, and the t = 0 decoder term alone."""
    import torch
    ref, apply, t, y, config, rng, shape = side.ref, side.apply, side.t, side.y, side.config, side.rng, side.shape
    tt, ty = torch.from_numpy(t), torch.from_numpy(y)
    x0 = np.clip(rng.standard_normal(shape), -1.2, 1.2).astype(np.float32)
    noise = rng.standard_normal(shape).astype(np.float32)
    ref_d = diffusion_pkg.create_diffusion("", learn_sigma=config.learn_sigma)
    our_d = create_diffusion("", learn_sigma=config.learn_sigma)
    ref_terms = ref_d.training_losses(ref, nchw(x0), tt, model_kwargs=dict(y=ty), noise=nchw(noise))
    our_terms = jax.jit(lambda: our_d.training_losses(lambda xt, tm: apply(xt, tm, y), x0, jnp.asarray(t),
                                                      noise))()
    rows = [compare(f"training loss term '{k}'", our_terms[k], ref_terms[k].numpy(), loss_tol)
            for k in ("loss", "mse", "vb") if k in ref_terms]
    # The t = 0 decoder term alone: pixels near the predicted mean, then far from it (the
    # noise scaled by 8 puts most pixels 5 to 20 std from the mean, the CDFs near 0 or 1).
    if config.learn_sigma:
        t0 = np.zeros_like(t)
        # One program for both rows (a jit inside the loop would compile it twice).
        vb_at_t0 = jax.jit(lambda n: our_d.training_losses(lambda xt, tm: apply(xt, tm, y), x0, jnp.asarray(t0),
                                                           n)["vb"])
        for label, scale, row_tol in (("typical", 1.0, loss_tol), ("extreme", 8.0, t0_extreme_tol)):
            n0 = noise * np.float32(scale)
            ref_vb = ref_d.training_losses(ref, nchw(x0), torch.from_numpy(t0), model_kwargs=dict(y=ty),
                                           noise=nchw(n0))["vb"]
            our_vb = vb_at_t0(n0)
            rows.append(compare(f"t = 0 decoder term, {label} pixels", our_vb, ref_vb.numpy(), row_tol))
    return rows


def _sampling_rows(side: _Sides, diffusion_pkg, respacing: str, sample_steps: int, cfg_fn, cfg_scale: float,
                   sample_tol: float) -> list[Row]:
    """Sampling steps with identical noise from the top of a respaced chain: DDPM, DDIM, guided DDPM."""
    import torch
    ref, apply, x, y, config, rng, shape = side.ref, side.apply, side.x, side.y, side.config, side.rng, side.shape
    batch, ty = len(y), torch.from_numpy(y)
    ref_d, our_d = (diffusion_pkg.create_diffusion(respacing, learn_sigma=config.learn_sigma),
                    create_diffusion(respacing, learn_sigma=config.learn_sigma))
    step_noise = [rng.standard_normal(shape).astype(np.float32) for _ in range(sample_steps)]
    rows = []
    for sampler in ("ddpm", "ddim"):
        ours_step, ref_step = (p_sample, ref_d.p_sample) if sampler == "ddpm" else (ddim_sample, ref_d.ddim_sample)
        x_ref, x_ours = nchw(x), jnp.asarray(x)
        for k in range(sample_steps):
            ti = np.full((batch,), our_d.num_timesteps - 1 - k, np.int64)
            x_ours, _ = ours_step(our_d, lambda xt, tm: apply(xt, tm, y), x_ours, jnp.asarray(ti),
                                  jnp.asarray(step_noise[k]), clip_denoised=False)
            with fixed_randn_like(nchw(step_noise[k])):
                x_ref = ref_step(ref, x_ref, torch.from_numpy(ti), clip_denoised=False,
                                 model_kwargs=dict(y=ty))["sample"]
        rows.append(compare(f"{sample_steps} {sampler} steps ('{respacing}')", x_ours, nhwc(x_ref), sample_tol))

    # Guided ancestral steps as in the reference's sample.py (doubled batch, cfg on 3 channels).
    x2, y2 = np.concatenate([x, x]), np.concatenate([y, np.full_like(y, config.num_classes)])
    x_ref, x_ours = nchw(x2), jnp.asarray(x2)
    for k in range(sample_steps):
        ti = np.full((2 * batch,), our_d.num_timesteps - 1 - k, np.int64)
        n2 = np.concatenate([step_noise[k], step_noise[k]])
        x_ours, _ = p_sample(our_d, lambda xt, tm: cfg_fn(xt, tm, y2), x_ours, jnp.asarray(ti), jnp.asarray(n2),
                             clip_denoised=False)
        with fixed_randn_like(nchw(n2)):
            x_ref = ref_d.p_sample(ref.forward_with_cfg, x_ref, torch.from_numpy(ti), clip_denoised=False,
                                   model_kwargs=dict(y=torch.from_numpy(y2), cfg_scale=cfg_scale))["sample"]
    rows.append(compare(f"{sample_steps} guided ddpm steps (cfg {cfg_scale})", x_ours[:batch],
                        nhwc(x_ref)[:batch], sample_tol))
    return rows


def run_training_comparison(models: types.ModuleType, diffusion_pkg: types.ModuleType, config: DiTConfig, *,
                            steps: int = 5, state_dict: dict | None = None, batch: int = 4, seed: int = 0,
                            ema_decay: float = 0.9999, loss_tol: float = 1e-5, param_tol: float = 5e-5,
                            log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """N steps of the reference's update (train.py) beside our jitted `train_step` (parity/training.py).

    Reference: `training_losses(model, x, t, y, noise)["loss"].mean()`, backward,
    `torch.optim.AdamW(lr=1e-4, weight_decay=0)`, EMA `ema = decay * ema + (1 - decay) * param`
    after each step, label dropout in train mode. Both sides start from the same weights and get
    the same batches, timesteps, noise and label-drop mask each step (the reference's
    `token_drop` is given the mask; ours gets it in the batch's 'draws').
    """
    import torch

    cfg = dataclasses.replace(config, scan_blocks=False)
    ref, _, params = reference_and_ours(models, cfg, state_dict, seed, log)
    ref_ema = torch_model(models, cfg)
    ref_ema.load_state_dict(ref.state_dict())
    ref_ema.requires_grad_(False)
    ref.train()
    opt = reference_optimizer(ref)
    ref_d = diffusion_pkg.create_diffusion("", learn_sigma=cfg.learn_sigma)
    shape = (batch, cfg.input_size, cfg.input_size, cfg.in_channels)

    def reference_step(k: int, rng):
        x0 = np.clip(rng.standard_normal(shape) * 0.5, -1, 1).astype(np.float32)
        y = rng.integers(0, cfg.num_classes, batch).astype(np.int64)
        t = rng.integers(0, 1000, batch).astype(np.int64)
        noise = rng.standard_normal(shape).astype(np.float32)
        drop = rng.random(batch) < cfg.class_dropout_prob
        if k == 0:  # make sure the decoder-NLL branch and a dropped label are exercised
            t[0], drop[-1] = 0, True
        force_label_drop(ref.y_embedder, drop)
        loss = ref_d.training_losses(ref, nchw(x0), torch.from_numpy(t), model_kwargs=dict(
            y=torch.from_numpy(y)), noise=nchw(noise))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            ema_sd, sd = ref_ema.state_dict(), ref.state_dict()
            for name in ema_sd:
                if name != "pos_embed":
                    ema_sd[name].mul_(ema_decay).add_(sd[name], alpha=1 - ema_decay)
        return loss.detach().numpy(), {"image": x0, "label": y.astype(np.int32),
                                       "draws": {"t": t.astype(np.int32), "noise": noise, "drop": drop}}

    _, program = our_program(cfg, ema_decay=ema_decay, seed=seed)
    return compare_training(program, params, cfg, reference_step, lambda: (flat_torch(ref), flat_torch(ref_ema)),
                            steps=steps, seed=seed, loss_tol=loss_tol, param_tol=param_tol, log=log)
