"""The Gaussian diffusion of IDDPM/ADM as DiT configures it, channels-last.

Schedule constants are float64 numpy arrays, cast to float32 when gathered per timestep (as the
reference does). Everything that touches arrays is a pure jnp function of (model output, x, t),
so it jit-compiles and shards with the batch. Timesteps `t` given to these functions are indices
into this (possibly respaced) diffusion; functions that evaluate the model (`training_losses`, the
samplers) pass it `timestep_map[t]`, the original 0..T-1 timestep, themselves (`apply_model`).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.respace import space_timesteps

MEAN_TYPES = ("epsilon", "start_x")
VAR_TYPES = ("learned_range", "fixed_large", "fixed_small")
LOSS_TYPES = ("mse", "rescaled_mse")


def linear_betas(num_timesteps: int) -> np.ndarray:
    """The reference's linear schedule, scaled so that 1000 steps gives 1e-4 .. 0.02."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """squaredcos_cap_v2 (IDDPM's cosine schedule)."""
    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


BETA_SCHEDULES = {"linear": linear_betas, "squaredcos_cap_v2": cosine_betas}


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


@jax.custom_jvp
def rounded_tanh(a):
    """float32 tanh, within 1 ulp, and correctly rounded where it approaches +-1.

    XLA's tanh is exactly 1.0 from |a| = 7.999 on and up to 5 ulps off before; a correctly
    rounded tanh (and PyTorch's on CPU) stays below 1 up to |a| = 9.01. The decoder NLL takes
    logs of differences of two CDFs there, so every ulp counts: for |a| >= 0.55, tanh = 1 - s with
    s = 2e / (1 + e), e = exp(-2|a|), whose only significant rounding is the last one (measured
    against float64: 0.75% of float32 inputs in [2, 4) off by 1 ulp, 0.02% in [4, 6), none from 8).
    """
    mag = jnp.abs(a)
    e = jnp.exp(-2.0 * mag)
    tail = jnp.sign(a) * (1.0 - 2.0 * e / (1.0 + e))
    return jnp.where(mag < 0.55, jnp.tanh(a), tail)


@rounded_tanh.defjvp
def _rounded_tanh_jvp(primals, tangents):
    y = rounded_tanh(primals[0])
    return y, (1.0 - y * y) * tangents[0]  # PyTorch's tanh backward, finite for any |a|


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + rounded_tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of x (in [-1, 1], 256 bins) under a Gaussian, with open edge bins."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mean_flat(x):
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


class GaussianDiffusion:
    """One (possibly respaced) diffusion process. Immutable; safe to close over in jitted code."""

    def __init__(self, betas: np.ndarray, timestep_map: np.ndarray | None = None, *,
                 mean_type: str = "epsilon", var_type: str = "learned_range", loss_type: str = "mse"):
        for value, allowed, what in ((mean_type, MEAN_TYPES, "mean_type"), (var_type, VAR_TYPES, "var_type"),
                                     (loss_type, LOSS_TYPES, "loss_type")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        if len(betas) < 2:
            raise ValueError("a diffusion needs at least 2 steps (the clipped posterior variance uses step 1)")
        self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type
        self.num_timesteps = len(betas)
        self.timestep_map = (np.arange(self.num_timesteps) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))
        self.betas = betas
        self.log_betas = np.log(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = ac = np.cumprod(alphas)
        self.alphas_cumprod_prev = ac_prev = np.append(1.0, ac[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        # The posterior variance is 0 at t = 0: its log is clipped by repeating element 1.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        # Fixed variances (used when the model does not learn sigma).
        self.fixed_large_variance = np.append(self.posterior_variance[1], betas[1:])

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def gather(arr: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
        """arr[t] as float32, shaped to broadcast against an ndim-array with batch first."""
        vals = jnp.asarray(arr.astype(np.float32))[t]
        return vals.reshape(vals.shape + (1,) * (ndim - 1))

    def model_timesteps(self, t: jax.Array) -> jax.Array:
        """The original timesteps the model sees for indices t of this diffusion."""
        return jnp.asarray(self.timestep_map, jnp.int32)[t]

    def apply_model(self, model_fn: Callable, x: jax.Array, t: jax.Array) -> jax.Array:
        """model_fn at indices t of this diffusion: the model sees the original timesteps (the
        reference's _WrappedModel), whatever the respacing."""
        return model_fn(x, self.model_timesteps(t))

    @property
    def learns_sigma(self) -> bool:
        return self.var_type == "learned_range"

    # -- forward process ---------------------------------------------------------------------
    def q_sample(self, x_start, t, noise):
        g = lambda a: self.gather(a, t, x_start.ndim)
        return g(self.sqrt_alphas_cumprod) * x_start + g(self.sqrt_one_minus_alphas_cumprod) * noise

    def q_posterior_mean_variance(self, x_start, x_t, t):
        g = lambda a: self.gather(a, t, x_t.ndim)
        mean = g(self.posterior_mean_coef1) * x_start + g(self.posterior_mean_coef2) * x_t
        return mean, g(self.posterior_variance), g(self.posterior_log_variance_clipped)

    # -- reverse process ---------------------------------------------------------------------
    def predict_xstart_from_eps(self, x_t, t, eps):
        g = lambda a: self.gather(a, t, x_t.ndim)
        return g(self.sqrt_recip_alphas_cumprod) * x_t - g(self.sqrt_recipm1_alphas_cumprod) * eps

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        g = lambda a: self.gather(a, t, x_t.ndim)
        return (g(self.sqrt_recip_alphas_cumprod) * x_t - pred_xstart) / g(self.sqrt_recipm1_alphas_cumprod)

    def p_mean_variance(self, model_output, x, t, clip_denoised: bool = False,
                        denoised_fn: Callable | None = None) -> dict:
        """Mean/variance of p(x_{t-1} | x_t) from a model output (channels last)."""
        model_output = model_output.astype(jnp.float32)
        c = x.shape[-1]
        g = lambda a: self.gather(a, t, x.ndim)
        if self.learns_sigma:
            if model_output.shape[-1] != 2 * c:
                raise ValueError(f"learned sigma needs {2 * c} output channels, got {model_output.shape[-1]}")
            model_output, v = model_output[..., :c], model_output[..., c:]
            min_log, max_log = g(self.posterior_log_variance_clipped), g(self.log_betas)
            frac = (v + 1) / 2  # v in [-1, 1] interpolates between the two bounds (not clamped)
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = jnp.exp(log_variance)
        elif self.var_type == "fixed_large":
            variance = jnp.broadcast_to(g(self.fixed_large_variance), x.shape)
            log_variance = jnp.broadcast_to(g(np.log(self.fixed_large_variance)), x.shape)
        else:
            variance = jnp.broadcast_to(g(self.posterior_variance), x.shape)
            log_variance = jnp.broadcast_to(g(self.posterior_log_variance_clipped), x.shape)

        def process(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return jnp.clip(x0, -1, 1) if clip_denoised else x0

        if self.mean_type == "start_x":
            pred_xstart = process(model_output)
        else:
            pred_xstart = process(self.predict_xstart_from_eps(x, t, model_output))
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    # -- training ----------------------------------------------------------------------------
    def vb_terms_bpd(self, model_output, x_start, x_t, t, clip_denoised: bool = False):
        """Variational bound term in bits per dim: KL for t > 0, decoder NLL at t == 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / np.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / np.log(2.0)
        return jnp.where(t == 0, nll, kl)

    def training_losses(self, model_fn: Callable, x_start, t, noise) -> dict:
        """Per-example loss terms: {'loss', 'mse', 'vb'} ('vb' only with learned sigma).

        `model_fn(x_t, model_timesteps)` returns the model output. With learned sigma, the vb term
        sees the mean prediction through a stop-gradient: it trains only the variance.
        """
        x_t = self.q_sample(x_start, t, noise)
        model_output = self.apply_model(model_fn, x_t, t).astype(jnp.float32)
        terms = {}
        c = x_start.shape[-1]
        if self.learns_sigma:
            eps, v = model_output[..., :c], model_output[..., c:]
            frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
            terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t)
            if self.loss_type == "rescaled_mse":
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
            model_output = eps
        target = x_start if self.mean_type == "start_x" else noise
        terms["mse"] = mean_flat(jnp.square(target - model_output))
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms


def respace(diffusion: GaussianDiffusion, spec: str | int | list[int]) -> GaussianDiffusion:
    """A whole (training) diffusion respaced for sampling ("250", "ddim50"; "" keeps every step): the same
    numbers as `create_diffusion(spec, ...)` with that diffusion's schedule."""
    if not np.array_equal(diffusion.timestep_map, np.arange(diffusion.num_timesteps)):
        raise ValueError("respace a whole diffusion, not an already respaced one")
    if spec is None or spec == "":
        return diffusion
    use = space_timesteps(diffusion.num_timesteps, spec)
    ac = diffusion.alphas_cumprod
    new_betas, last = [], 1.0
    for i in use:
        new_betas.append(1 - ac[i] / last)
        last = ac[i]
    return GaussianDiffusion(np.array(new_betas), np.array(use), mean_type=diffusion.mean_type,
                             var_type=diffusion.var_type, loss_type=diffusion.loss_type)


def create_diffusion(timestep_respacing: str | int | list[int] | None = None, noise_schedule: str = "linear",
                     use_kl: bool = False, sigma_small: bool = False, predict_xstart: bool = False,
                     learn_sigma: bool = True, rescale_learned_sigmas: bool = False,
                     diffusion_steps: int = 1000) -> GaussianDiffusion:
    """The reference's `create_diffusion`: `create_diffusion("250")` for sampling, `""` for training."""
    if use_kl:
        raise ValueError("use_kl=True (the pure variational-bound loss) is not supported; DiT trains with "
                         "the hybrid MSE + vb loss (use_kl=False)")
    if noise_schedule not in BETA_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {sorted(BETA_SCHEDULES)}, got {noise_schedule!r}")
    betas = BETA_SCHEDULES[noise_schedule](diffusion_steps)
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    use = space_timesteps(diffusion_steps, timestep_respacing)
    # Respaced betas keep the same alpha_bar at each kept step.
    ac = np.cumprod(1.0 - betas)
    new_betas, last = [], 1.0
    for i in use:
        new_betas.append(1 - ac[i] / last)
        last = ac[i]
    var_type = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
    return GaussianDiffusion(np.array(new_betas), np.array(use),
                             mean_type="start_x" if predict_xstart else "epsilon", var_type=var_type,
                             loss_type="rescaled_mse" if rescale_learned_sigmas else "mse")
