"""SiT's transport/path.py (statement): the coupling plans ICPlan (Linear), VPCPlan (VP), GVPCPlan (GVP).

Each plan gives (coefficient, time derivative) pairs for the data term alpha_t and the noise term
sigma_t of x_t = alpha_t x1 + sigma_t x0, the SDE drift in score form and the diffusion forms.
compute_diffusion keeps the official code's two faults: its table is keyed "inccreasing-decreasing"
(so "increasing-decreasing" raises NotImplementedError) and "constant" gives the Python float `norm`.
"""

import numpy as np
import torch as th


def expand_t_like_x(t, x):
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return t.view(t.size(0), *([1] * (x.dim() - 1)))


class ICPlan:
    """Linear: alpha_t = t, sigma_t = 1 - t."""

    def __init__(self, sigma=0.0):
        self.sigma = sigma

    def compute_alpha_t(self, t):
        return t, 1

    def compute_sigma_t(self, t):
        return 1 - t, -1

    def compute_d_alpha_alpha_ratio_t(self, t):
        return 1 / t

    def compute_drift(self, x, t):
        """(-(d alpha/alpha) x, (d alpha/alpha) sigma^2 - sigma d sigma)."""
        t = expand_t_like_x(t, x)
        ratio = self.compute_d_alpha_alpha_ratio_t(t)
        sigma_t, d_sigma_t = self.compute_sigma_t(t)
        return -(ratio * x), ratio * (sigma_t ** 2) - sigma_t * d_sigma_t

    def compute_diffusion(self, x, t, form="constant", norm=1.0):
        t = expand_t_like_x(t, x)
        table = {
            "constant": norm,
            "SBDM": norm * self.compute_drift(x, t)[1],
            "sigma": norm * self.compute_sigma_t(t)[0],
            "linear": norm * (1 - t),
            "decreasing": 0.25 * (norm * th.cos(np.pi * t) + 1) ** 2,
            "inccreasing-decreasing": norm * th.sin(np.pi * t) ** 2,
        }
        if form not in table:
            raise NotImplementedError(f"Diffusion form {form} not implemented")
        return table[form]

    def get_score_from_velocity(self, velocity, x, t):
        t = expand_t_like_x(t, x)
        alpha_t, d_alpha_t = self.compute_alpha_t(t)
        sigma_t, d_sigma_t = self.compute_sigma_t(t)
        r = alpha_t / d_alpha_t
        return (r * velocity - x) / (sigma_t ** 2 - r * d_sigma_t * sigma_t)

    def get_noise_from_velocity(self, velocity, x, t):
        t = expand_t_like_x(t, x)
        alpha_t, d_alpha_t = self.compute_alpha_t(t)
        sigma_t, d_sigma_t = self.compute_sigma_t(t)
        r = alpha_t / d_alpha_t
        return (r * velocity - x) / (r * d_sigma_t - sigma_t)

    def get_velocity_from_score(self, score, x, t):
        t = expand_t_like_x(t, x)
        drift, var = self.compute_drift(x, t)
        return var * score - drift

    def compute_mu_t(self, t, x0, x1):
        t = expand_t_like_x(t, x1)
        return self.compute_alpha_t(t)[0] * x1 + self.compute_sigma_t(t)[0] * x0

    def compute_xt(self, t, x0, x1):
        return self.compute_mu_t(t, x0, x1)

    def compute_ut(self, t, x0, x1, xt):
        t = expand_t_like_x(t, x1)
        return self.compute_alpha_t(t)[1] * x1 + self.compute_sigma_t(t)[1] * x0

    def plan(self, t, x0, x1):
        xt = self.compute_xt(t, x0, x1)
        return t, xt, self.compute_ut(t, x0, x1, xt)


class VPCPlan(ICPlan):
    """VP: log alpha_t = -(1/4)(1-t)^2 (smax - smin) - (1/2)(1-t) smin, sigma_t = sqrt(1 - alpha_t^2)."""

    def __init__(self, sigma_min=0.1, sigma_max=20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def log_mean_coeff(self, t):
        return -0.25 * ((1 - t) ** 2) * (self.sigma_max - self.sigma_min) - 0.5 * (1 - t) * self.sigma_min

    def d_log_mean_coeff(self, t):
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def compute_alpha_t(self, t):
        alpha_t = th.exp(self.log_mean_coeff(t))
        return alpha_t, alpha_t * self.d_log_mean_coeff(t)

    def compute_sigma_t(self, t):
        two_log = 2 * self.log_mean_coeff(t)
        sigma_t = th.sqrt(1 - th.exp(two_log))
        return sigma_t, th.exp(two_log) * (2 * self.d_log_mean_coeff(t)) / (-2 * sigma_t)

    def compute_d_alpha_alpha_ratio_t(self, t):
        return self.d_log_mean_coeff(t)

    def compute_drift(self, x, t):
        t = expand_t_like_x(t, x)
        beta_t = self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min)
        return -0.5 * beta_t * x, beta_t / 2


class GVPCPlan(ICPlan):
    """GVP: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)."""

    def compute_alpha_t(self, t):
        return th.sin(t * np.pi / 2), np.pi / 2 * th.cos(t * np.pi / 2)

    def compute_sigma_t(self, t):
        return th.cos(t * np.pi / 2), -np.pi / 2 * th.sin(t * np.pi / 2)

    def compute_d_alpha_alpha_ratio_t(self, t):
        return np.pi / (2 * th.tan(t * np.pi / 2))
