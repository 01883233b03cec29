"""REPA's SILoss (statement). t = 0 is data: linear x_t = (1 - t) x + t e; v target d_alpha x + d_sigma e."""

import math

import torch
import torch.nn.functional as F


def interpolant(path, t):
    if path == "linear":
        return 1 - t, t, -1, 1
    if path == "cosine":
        a = t * math.pi / 2
        return torch.cos(a), torch.sin(a), -math.pi / 2 * torch.sin(a), math.pi / 2 * torch.cos(a)
    raise NotImplementedError(path)


def sample_time(batch, weighting, path):
    if weighting == "uniform":
        return torch.rand((batch, 1, 1, 1))
    sigma = torch.randn((batch, 1, 1, 1)).exp()       # EDM-style lognormal sigma, N(0, 1)
    return sigma / (1 + sigma) if path == "linear" else 2 / math.pi * torch.atan(sigma)


class SILoss:
    def __init__(self, path="linear", weighting="uniform"):
        self.path, self.weighting = path, weighting

    def __call__(self, model, images, y, zs):
        """(per-example denoising loss (B,), projection loss scalar); draws: time, then noise."""
        t = sample_time(images.shape[0], self.weighting, self.path).to(images.dtype)
        noise = torch.randn_like(images)
        alpha, sigma, d_alpha, d_sigma = interpolant(self.path, t)
        out, zs_tilde = model(alpha * images + sigma * noise, t.flatten(), y)
        denoise = ((out - (d_alpha * images + d_sigma * noise)) ** 2).mean(dim=(1, 2, 3))
        proj = 0.0
        for z, zt in zip(zs, zs_tilde):
            for b in range(z.shape[0]):   # per example: mean over tokens of -cos
                proj = proj + (-(F.normalize(z[b], dim=-1) * F.normalize(zt[b], dim=-1)).sum(-1)).mean()
        return denoise, proj / (len(zs) * zs[0].shape[0])
