"""Statement of LightningDiT's additions to SiT's transport (hustvl/LightningDiT transport/), PyTorch.

Convention (SiT's): x1 is data, x0 ~ N(0, I) noise, x_t = t x1 + (1 - t) x0, so t = 1 is data and the
velocity target is x1 - x0.
- use_lognorm: t = sigmoid(n) with n drawn by scipy.stats.norm.rvs(0, 1, size=B) (numpy's global
  generator), the sigmoid 1 / (1 + exp(-n)) in float64, then cast to float32; otherwise t = th.rand(B).
- training_losses: x0 = th.randn_like(x1); terms "loss" = mean over C, H, W of (out - u_t)^2 and, with
  use_cosine_loss, "cos_loss" = mean over H, W of 1 - cosine_similarity(out, u_t, dim=1) (channels);
  train.py adds the two batch means with weight 1.
- Sampler.sample_ode: torchdiffeq on th.linspace(t0, t1, num_steps); timestep_shift s > 0 maps each
  grid point to s t / (1 + (s - 1) t) (float32 arithmetic), which puts more steps near t = 0 (noise)
  for s < 1.
"""

import numpy as np
import torch as th
from scipy.stats import norm
from torchdiffeq import odeint


def mean_flat(x):
    return th.mean(x, dim=list(range(1, x.dim())))


class Transport:
    def __init__(self, *, use_cosine_loss=False, use_lognorm=False):
        self.use_cosine_loss, self.use_lognorm = use_cosine_loss, use_lognorm

    def sample_logit_normal(self, mu, sigma, size=1):
        n = norm.rvs(loc=mu, scale=sigma, size=size)
        return th.tensor(1 / (1 + np.exp(-n)), dtype=th.float32)

    def sample(self, x1, sp_timesteps=None, shifted_mu=0):
        x0 = th.randn_like(x1)
        t = self.sample_logit_normal(0, 1, size=x1.shape[0]) if self.use_lognorm else th.rand((x1.shape[0],))
        return t.to(x1), x0, x1

    def training_losses(self, model, x1, model_kwargs=None, sp_timesteps=None, shifted_mu=0):
        t, x0, x1 = self.sample(x1, sp_timesteps, shifted_mu)
        te = t.view(-1, *([1] * (x1.dim() - 1)))
        xt, ut = te * x1 + (1 - te) * x0, x1 - x0
        out = model(xt, t, **(model_kwargs or {}))
        terms = {"pred": out, "loss": mean_flat((out - ut) ** 2)}
        if self.use_cosine_loss:
            terms["cos_loss"] = mean_flat(1 - th.nn.functional.cosine_similarity(out, ut, dim=1))
        return terms


def shifted_grid(t0, t1, num_steps, timestep_shift):
    t = th.linspace(t0, t1, num_steps)
    if timestep_shift > 0:
        t = th.stack([timestep_shift * tn / (1 + (timestep_shift - 1) * tn) for tn in t])
    return t


class Sampler:
    def __init__(self, transport):
        self.transport = transport

    def sample_ode(self, *, sampling_method="euler", num_steps=50, atol=1e-6, rtol=1e-3, reverse=False,
                   timestep_shift=0.0):
        grid = shifted_grid(0.0, 1.0, num_steps, timestep_shift)

        def _sample(x, model, **model_kwargs):
            field = lambda t, x: model(x, th.ones(x.size(0)) * t, **model_kwargs)
            return odeint(field, x, grid, method=sampling_method, atol=[atol], rtol=[rtol])
        return _sample
