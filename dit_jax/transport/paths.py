"""SiT's interpolation paths x_t = alpha_t x1 + sigma_t x0, channels-last.

Convention (SiT's): x1 is data, x0 ~ N(0, I) is noise, t in [0, 1] and t = 1 is data. Each path
gives alpha_t, sigma_t and their time derivatives; from these follow the path's target velocity,
the drift of the equivalent SDE (`compute_drift`: its mean term and its diffusion term, the
"variance" that turns a score into a velocity), the diffusion forms of the sampling SDE, and the
conversions between velocity, score and noise predictions.

Times `t` are (B,) arrays (or scalars) and are broadcast against x's trailing dimensions. The
operations follow SiT's order of evaluation so float32 results round the same way.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

PATHS = ("Linear", "GVP", "VP")
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")


def expand_t_like_x(t, x: jax.Array) -> jax.Array:
    """(B,) times -> (B, 1, ..., 1), broadcastable against x; scalars stay scalars."""
    t = jnp.asarray(t, dtype=x.dtype)
    if t.ndim == 0:
        return t
    return t.reshape((t.shape[0],) + (1,) * (x.ndim - 1))


@dataclasses.dataclass(frozen=True)
class Linear:
    """SiT's ICPlan: alpha_t = t, sigma_t = 1 - t (rectified flow; velocity target x1 - x0)."""

    def compute_alpha_t(self, t):
        return t, jnp.ones_like(t)

    def compute_sigma_t(self, t):
        return 1 - t, -jnp.ones_like(t)

    def compute_d_alpha_alpha_ratio_t(self, t):
        return 1 / t

    def compute_drift(self, x, t):
        """(drift mean, drift variance) of the SDE in score form: v = -mean_term + var * score.

        SiT returns the mean term already negated (-(d alpha / alpha) x), and so do we.
        """
        t = expand_t_like_x(t, x)
        alpha_ratio = self.compute_d_alpha_alpha_ratio_t(t)
        sigma_t, d_sigma_t = self.compute_sigma_t(t)
        drift = alpha_ratio * x
        diffusion = alpha_ratio * (sigma_t ** 2) - sigma_t * d_sigma_t
        return -drift, diffusion

    def compute_diffusion(self, x, t, form: str = "constant", norm: float = 1.0):
        """Diffusion coefficient w(t) of the sampling SDE dx = [v + w s] dt + sqrt(2 w) dW.

        "increasing-decreasing" is norm * sin(pi t)^2 and "constant" is norm as an array: SiT's own
        code misspells the first key (so the form raises there) and returns the second as a Python
        float (which its SDE steps cannot take the square root of); these are the intended formulas.
        """
        if form not in DIFFUSION_FORMS:
            raise ValueError(f"diffusion_form must be one of {DIFFUSION_FORMS}, got {form!r}")
        t = expand_t_like_x(t, x)
        if form == "constant":
            return jnp.full(jnp.shape(t), norm, x.dtype)
        if form == "SBDM":
            return norm * self.compute_drift(x, t)[1]
        if form == "sigma":
            return norm * self.compute_sigma_t(t)[0]
        if form == "linear":
            return norm * (1 - t)
        if form == "decreasing":
            return 0.25 * (norm * jnp.cos(math.pi * t) + 1) ** 2
        return norm * jnp.sin(math.pi * t) ** 2

    def get_score_from_velocity(self, velocity, x, t):
        t = expand_t_like_x(t, x)
        alpha_t, d_alpha_t = self.compute_alpha_t(t)
        sigma_t, d_sigma_t = self.compute_sigma_t(t)
        reverse_alpha_ratio = alpha_t / d_alpha_t
        var = sigma_t ** 2 - reverse_alpha_ratio * d_sigma_t * sigma_t
        return (reverse_alpha_ratio * velocity - x) / var

    def get_noise_from_velocity(self, velocity, x, t):
        t = expand_t_like_x(t, x)
        alpha_t, d_alpha_t = self.compute_alpha_t(t)
        sigma_t, d_sigma_t = self.compute_sigma_t(t)
        reverse_alpha_ratio = alpha_t / d_alpha_t
        var = reverse_alpha_ratio * d_sigma_t - sigma_t
        return (reverse_alpha_ratio * velocity - x) / var

    def get_velocity_from_score(self, score, x, t):
        drift_mean, drift_var = self.compute_drift(x, t)
        return drift_var * score - drift_mean

    def get_score_from_noise(self, noise, x, t):
        """score = -noise / sigma_t (SiT's get_score / noise_ode)."""
        sigma_t, _ = self.compute_sigma_t(expand_t_like_x(t, x))
        return noise / -sigma_t

    def compute_xt(self, t, x0, x1):
        t = expand_t_like_x(t, x1)
        alpha_t, _ = self.compute_alpha_t(t)
        sigma_t, _ = self.compute_sigma_t(t)
        return alpha_t * x1 + sigma_t * x0

    def compute_ut(self, t, x0, x1):
        """The path's velocity d x_t / dt = d_alpha_t x1 + d_sigma_t x0 (the velocity target)."""
        t = expand_t_like_x(t, x1)
        _, d_alpha_t = self.compute_alpha_t(t)
        _, d_sigma_t = self.compute_sigma_t(t)
        return d_alpha_t * x1 + d_sigma_t * x0

    def plan(self, t, x0, x1):
        return t, self.compute_xt(t, x0, x1), self.compute_ut(t, x0, x1)


@dataclasses.dataclass(frozen=True)
class GVP(Linear):
    """Generalised variance-preserving path: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)."""

    def compute_alpha_t(self, t):
        return jnp.sin(t * math.pi / 2), math.pi / 2 * jnp.cos(t * math.pi / 2)

    def compute_sigma_t(self, t):
        return jnp.cos(t * math.pi / 2), -math.pi / 2 * jnp.sin(t * math.pi / 2)

    def compute_d_alpha_alpha_ratio_t(self, t):
        return math.pi / (2 * jnp.tan(t * math.pi / 2))


@dataclasses.dataclass(frozen=True)
class VP(Linear):
    """The score-SDE VP path with beta(s) linear from sigma_min to sigma_max in reversed time s = 1 - t.

    log alpha_t = -(1/4)(1 - t)^2 (beta_max - beta_min) - (1/2)(1 - t) beta_min, sigma_t = sqrt(1 - alpha_t^2).
    """
    sigma_min: float = 0.1
    sigma_max: float = 20.0

    def log_mean_coeff(self, t):
        return -0.25 * ((1 - t) ** 2) * (self.sigma_max - self.sigma_min) - 0.5 * (1 - t) * self.sigma_min

    def d_log_mean_coeff(self, t):
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def compute_alpha_t(self, t):
        alpha_t = jnp.exp(self.log_mean_coeff(t))
        return alpha_t, alpha_t * self.d_log_mean_coeff(t)

    def compute_sigma_t(self, t):
        p_sigma_t = 2 * self.log_mean_coeff(t)
        sigma_t = jnp.sqrt(1 - jnp.exp(p_sigma_t))
        d_sigma_t = jnp.exp(p_sigma_t) * (2 * self.d_log_mean_coeff(t)) / (-2 * sigma_t)
        return sigma_t, d_sigma_t

    def compute_d_alpha_alpha_ratio_t(self, t):
        # d log alpha / dt in closed form: stable where alpha_t underflows.
        return self.d_log_mean_coeff(t)

    def compute_drift(self, x, t):
        t = expand_t_like_x(t, x)
        beta_t = self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min)
        return -0.5 * beta_t * x, beta_t / 2


def make_path(name: str) -> Linear:
    if name not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {name!r}")
    return {"Linear": Linear, "GVP": GVP, "VP": VP}[name]()
