"""REPA's samplers (statement): state in float64, the network in the latents' dtype; t = 1 noise, t = 0
data; classifier-free guidance only where guidance_low <= t_cur <= guidance_high, on a doubled batch
(conditional first, null label second); `model(x, t, y)` returns (velocity, zs)."""

import math

import torch


def _guided(t_cur, cfg_scale, low, high):
    return cfg_scale > 1.0 and low <= t_cur <= high


def _velocity(model, x, t, y, y_null, guide, cfg_scale, dtype):
    """The model's velocity at time t (float64 out), guided when `guide`."""
    inp, lab = (torch.cat([x, x]), torch.cat([y, y_null])) if guide else (x, y)
    time = torch.ones(inp.shape[0], dtype=torch.float64) * t
    v = model(inp.to(dtype), time.to(dtype), lab)[0].to(torch.float64)
    if guide:
        cond, uncond = v.chunk(2)
        v = uncond + cfg_scale * (cond - uncond)
    return v


def euler_sampler(model, latents, y, num_steps=20, heun=False, cfg_scale=1.0, guidance_low=0.0,
                  guidance_high=1.0, null_label=1000):
    """linspace(1, 0, num_steps + 1) grid; Euler, or Heun's corrector on every step but the last, which
    decides its guidance from t_cur (not t_next), as REPA's code does."""
    dtype = latents.dtype
    y_null = torch.full_like(y, null_label)
    ts = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    x = latents.to(torch.float64)
    with torch.no_grad():
        for i in range(num_steps):
            t_cur, t_next = ts[i], ts[i + 1]
            guide = _guided(t_cur, cfg_scale, guidance_low, guidance_high)
            d = _velocity(model, x, t_cur, y, y_null, guide, cfg_scale, dtype)
            x_next = x + (t_next - t_cur) * d
            if heun and i < num_steps - 1:
                d2 = _velocity(model, x_next, t_next, y, y_null, guide, cfg_scale, dtype)
                x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
            x = x_next
    return x


def _score(v, x, t, path):
    """Score from the velocity: (alpha / d_alpha * v - x) / (sigma^2 - alpha / d_alpha * d_sigma * sigma)."""
    t = t.view(-1, *([1] * (x.ndim - 1)))
    if path == "linear":
        alpha, d_alpha, sigma, d_sigma = 1 - t, -torch.ones_like(x), t, torch.ones_like(x)
    else:
        alpha, sigma = torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)
        d_alpha, d_sigma = -math.pi / 2 * sigma, math.pi / 2 * alpha
    ratio = alpha / d_alpha
    return (ratio * v - x) / (sigma ** 2 - ratio * d_sigma * sigma)


def _drift(model, x, t, y, y_null, guide, cfg_scale, dtype, path):
    """v - 0.5 * 2t * score, on the (doubled) batch, then guided: guidance applies to the drift."""
    inp, lab = (torch.cat([x, x]), torch.cat([y, y_null])) if guide else (x, y)
    time = torch.ones(inp.shape[0], dtype=torch.float64) * t
    v = model(inp.to(dtype), time.to(dtype), lab)[0].to(torch.float64)
    d = v - 0.5 * (2 * t) * _score(v, inp, time, path)
    if guide:
        cond, uncond = d.chunk(2)
        d = uncond + cfg_scale * (cond - uncond)
    return d


def euler_maruyama_sampler(model, latents, y, num_steps=20, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0,
                           path="linear", null_label=1000):
    """Grid linspace(1, 0.04, num_steps) then 0: num_steps - 1 noisy Euler-Maruyama steps with diffusion 2t
    (noise drawn by torch.randn_like each step), then one mean step from 0.04 to 0."""
    dtype = latents.dtype
    y_null = torch.full_like(y, null_label)
    ts = torch.cat([torch.linspace(1.0, 0.04, num_steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = latents.to(torch.float64)
    with torch.no_grad():
        for i in range(num_steps - 1):
            t_cur, t_next = ts[i], ts[i + 1]
            dt = t_next - t_cur
            guide = _guided(t_cur, cfg_scale, guidance_low, guidance_high)
            eps = torch.randn_like(x)
            d = _drift(model, x, t_cur, y, y_null, guide, cfg_scale, dtype, path)
            x = x + d * dt + torch.sqrt(2 * t_cur) * eps * torch.sqrt(torch.abs(dt))
        t_cur, t_next = ts[-2], ts[-1]
        guide = _guided(t_cur, cfg_scale, guidance_low, guidance_high)
        d = _drift(model, x, t_cur, y, y_null, guide, cfg_scale, dtype, path)
        return x + (t_next - t_cur) * d
