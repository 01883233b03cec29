"""Ancestral DDPM and DDIM samplers and classifier-free guidance, as jit-compiled loops.

A model function here is `model_fn(x, t_model) -> output` on channels-last arrays, where t_model
holds the original timesteps. Step functions take their noise explicitly (so they can be checked
against the reference with identical noise); the loops draw step i's noise from
`fold_in(key, i)`, so a run is a pure function of (x_T, key).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dit_jax.diffusion.gaussian import GaussianDiffusion

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
SAMPLERS = ("ddpm", "ddim")
CFG_MODES = ("reference", "all")


def apply_guidance(output: jax.Array, scale: float, channels: int) -> jax.Array:
    """Classifier-free guidance on a [cond; uncond] batch, returned in the same doubled layout.

    The first `channels` output channels become `uncond + scale * (cond - uncond)` in both halves;
    the remaining channels stay as each half computed them. The reference uses channels=3 (of 4
    eps channels, a quirk kept for reproducibility); "all" mode guides every eps channel.
    """
    cond, uncond = jnp.split(output, 2, axis=0)
    guided = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
    return jnp.concatenate([jnp.concatenate([guided, cond[..., channels:]], axis=-1),
                            jnp.concatenate([guided, uncond[..., channels:]], axis=-1)], axis=0)


def guidance_channels(mode: str, in_channels: int) -> int:
    if mode not in CFG_MODES:
        raise ValueError(f"cfg mode must be one of {CFG_MODES}, got {mode!r}")
    return min(3, in_channels) if mode == "reference" else in_channels


def guided_model_fn(class_model_fn: Callable, labels: jax.Array, null_class: int, scale: float,
                    channels: int) -> ModelFn:
    """Wrap `class_model_fn(x, t, y)` into a guided `model_fn(x, t)` for the conditional half.

    Runs the model once on [x; x] with labels [y; null], as the reference's forward_with_cfg.
    """
    def model_fn(x, t):
        out = class_model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                             jnp.concatenate([labels, jnp.full_like(labels, null_class)]))
        return apply_guidance(out, scale, channels)[: x.shape[0]]
    return model_fn


def p_sample(diffusion: GaussianDiffusion, model_output, x, t, noise, clip_denoised: bool = False):
    """One ancestral step x_t -> x_{t-1}; no noise is added at t == 0 (though it is drawn)."""
    out = diffusion.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)
    nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise, out["pred_xstart"]


def ddim_sample(diffusion: GaussianDiffusion, model_output, x, t, noise, eta: float = 0.0,
                clip_denoised: bool = False):
    """One DDIM step; eps is re-derived from pred_xstart, the learned variance is ignored."""
    out = diffusion.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar = diffusion.gather(diffusion.alphas_cumprod, t, x.ndim)
    alpha_bar_prev = diffusion.gather(diffusion.alphas_cumprod_prev, t, x.ndim)
    sigma = eta * jnp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * jnp.sqrt(1 - alpha_bar / alpha_bar_prev)
    mean = out["pred_xstart"] * jnp.sqrt(alpha_bar_prev) + jnp.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return mean + nonzero * sigma * noise, out["pred_xstart"]


def sample_loop(diffusion: GaussianDiffusion, model_fn: ModelFn, x_T: jax.Array, key: jax.Array,
                sampler: str = "ddpm", eta: float = 0.0, clip_denoised: bool = False,
                noise_fn: Callable | None = None) -> jax.Array:
    """Run all steps from index T-1 down to 0 in one `lax.fori_loop` (jit-friendly).

    noise_fn(key, step, x) gives step `step`'s noise; by default normal(fold_in(key, step)).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    noise_fn = noise_fn or (lambda k, i, x: jax.random.normal(jax.random.fold_in(k, i), x.shape, x.dtype))
    n = diffusion.num_timesteps

    def body(k, x):
        i = n - 1 - k
        t = jnp.full((x.shape[0],), i, jnp.int32)
        out = model_fn(x, diffusion.model_timesteps(t))
        noise = noise_fn(key, i, x)
        if sampler == "ddpm":
            x, _ = p_sample(diffusion, out, x, t, noise, clip_denoised)
        else:
            x, _ = ddim_sample(diffusion, out, x, t, noise, eta, clip_denoised)
        return x

    return jax.lax.fori_loop(0, n, body, x_T.astype(jnp.float32))
