"""Ancestral DDPM and DDIM samplers and classifier-free guidance, as jit-compiled loops.

A model function here is `model_fn(x, t_model) -> output` on channels-last arrays. The step
functions take the model function, not its output, and evaluate it at the original timesteps of
the (possibly respaced) diffusion themselves, as the reference's wrapped model does, so a caller
cannot pass a respaced index to the model by mistake. They take their noise explicitly (so they
can be checked against the reference with identical noise); the loops draw step i's noise from
`fold_in(key, i)`, so a run is a pure function of (x_T, key). `clip_denoised` defaults to True,
as in the reference; its sample.py (and ours, for latents) passes False.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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
                    channels: int, *, interval: tuple[float, float] | None = None,
                    num_timesteps: int = 1000) -> ModelFn:
    """Wrap `class_model_fn(x, t, y)` into a guided `model_fn(x, t)` on a batch of B samples.

    Runs the model once on [x; x] with labels [y; null] and returns the CONDITIONAL half only
    (B rows): the guided first `channels` channels followed by the conditional pass's remaining
    channels (its variance), which is the half the reference keeps at the end. For the
    reference's doubled layout use `forward_with_cfg`.

    interval=(lo, hi): guide only the samples whose noise level s = t / num_timesteps (t the
    original timestep the model sees, s = 1 pure noise) lies in [lo, hi], and return the plain
    conditional output elsewhere (t outside [0, num_timesteps) counts as its nearest end). The doubled
    batch is run either way, so shapes and the compiled program do not depend on t. None (the
    default, the reference's behaviour) guides every step.
    """
    inside = None if interval is None else interval_mask(interval, num_timesteps)

    def model_fn(x, t):
        out = class_model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                             jnp.concatenate([labels, jnp.full_like(labels, null_class)]))
        guided = apply_guidance(out, scale, channels)[: x.shape[0]]
        if interval is None:
            return guided
        return jnp.where(inside(t).reshape((-1,) + (1,) * (guided.ndim - 1)), guided, out[: x.shape[0]])
    return model_fn


def interval_mask(interval, num_timesteps: int) -> Callable[[jax.Array], jax.Array]:
    """`inside(t)`: per row, whether the original timestep t has its noise level t / T in [lo, hi]
    (t outside [0, T) counts as its nearest end); every guidance of a DDPM model uses it."""
    lo, hi = check_interval(interval)
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer (the training T), got {num_timesteps!r}")
    # s = t / T decided once per timestep in float64 (as Python computes it), so that t = 700 of
    # 1000 is inside (0.3, 0.7) on every backend: XLA may turn a float32 t / T into t * (1 / T).
    steps = np.arange(num_timesteps)
    inside_table = (lo <= steps / num_timesteps) & (steps / num_timesteps <= hi)
    return lambda t: jnp.asarray(inside_table)[jnp.clip(t, 0, num_timesteps - 1)]


def check_interval(interval) -> tuple[float, float]:
    """(lo, hi) with 0 <= lo <= hi <= 1, or ValueError naming the bad value."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval must be a pair (lo, hi) of noise levels in [0, 1], "
                         f"got {interval!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi <= 1 (noise levels t / T), "
                         f"got ({lo}, {hi})")
    return lo, hi


def forward_with_cfg(class_model_fn: Callable, scale: float, channels: int = 3) -> Callable:
    """The reference's `DiT.forward_with_cfg` layout: `fn(x, t, y)` on a doubled batch of 2B rows.

    As the reference, only the first half of x is used (run twice, with the labels y as given:
    conditional first, null second) and both halves are returned: rows [:B] the guided channels
    plus the conditional remaining channels, rows [B:] the same guided channels plus the
    unconditional remaining channels. Sampling on this layout and keeping rows [:B] equals
    sampling with `guided_model_fn`.
    """
    def model_fn(x, t, y):
        half = x[: x.shape[0] // 2]
        return apply_guidance(class_model_fn(jnp.concatenate([half, half]), t, y), scale, channels)
    return model_fn


def p_sample(diffusion: GaussianDiffusion, model_fn: ModelFn, x, t, noise, clip_denoised: bool = True):
    """One ancestral step x_t -> x_{t-1} for indices t of `diffusion`; no noise is added at t == 0
    (though it is drawn). Returns (x_{t-1}, pred_xstart)."""
    out = diffusion.p_mean_variance(diffusion.apply_model(model_fn, x, t), x, t, clip_denoised=clip_denoised)
    nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise, out["pred_xstart"]


def ddim_sample(diffusion: GaussianDiffusion, model_fn: ModelFn, x, t, noise, eta: float = 0.0,
                clip_denoised: bool = True):
    """One DDIM step; eps is re-derived from pred_xstart, the learned variance is ignored."""
    out = diffusion.p_mean_variance(diffusion.apply_model(model_fn, x, t), x, t, clip_denoised=clip_denoised)
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    alpha_bar = diffusion.gather(diffusion.alphas_cumprod, t, x.ndim)
    alpha_bar_prev = diffusion.gather(diffusion.alphas_cumprod_prev, t, x.ndim)
    sigma = eta * jnp.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * jnp.sqrt(1 - alpha_bar / alpha_bar_prev)
    mean = out["pred_xstart"] * jnp.sqrt(alpha_bar_prev) + jnp.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    nonzero = (t != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return mean + nonzero * sigma * noise, out["pred_xstart"]


def sample_loop(diffusion: GaussianDiffusion, model_fn: ModelFn, x_T: jax.Array, key: jax.Array,
                sampler: str = "ddpm", eta: float = 0.0, clip_denoised: bool = True,
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
        noise = noise_fn(key, i, x)
        if sampler == "ddpm":
            x, _ = p_sample(diffusion, model_fn, x, t, noise, clip_denoised)
        else:
            x, _ = ddim_sample(diffusion, model_fn, x, t, noise, eta, clip_denoised)
        return x

    return jax.lax.fori_loop(0, n, body, x_T.astype(jnp.float32))
