"""REPA's samplers (sihyun-yu/REPA samplers.py), in its time convention (t = 1 noise, t = 0 data), with its
quirks kept:

* euler: grid torch.linspace(1, 0, N + 1); Euler, or with heun=True Heun's corrector on every step but the
  last, the corrector's guidance decided from t_cur (not t_next).
* euler_maruyama: grid torch.linspace(1, 0.04, N) then 0; N - 1 Euler-Maruyama steps with diffusion 2t
  (drift v - t * score), then one mean step from 0.04 to 0; guidance applies to the drift.
* classifier-free guidance only where guidance_low <= t_cur <= guidance_high (and cfg_scale > 1), on a
  doubled batch (conditional, then the null label: REPA hard-codes 1000, here the model's null class).
* the state in float64 where JAX's x64 is on (REPA's), else float32; the network sees float32 inputs.

model_fn(x, t, y) -> velocity (B, H, W, C) (a learned-sigma network's first half). The grids are static,
so each step's guidance decision is made here in float64 as REPA makes it, and the loop is a lax.scan.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.transport.repa import interpolant


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """float64 torch.linspace: start + i * step for the first half, end - (steps - 1 - i) * step for the
    rest (its values differ from numpy's in the last bits, which can flip a guidance-interval decision)."""
    if steps == 1:
        return np.array([start], np.float64)
    step = (end - start) / (steps - 1)
    i = np.arange(steps)
    return np.where(i < steps // 2, start + step * i, end - step * (steps - 1 - i)).astype(np.float64)


def _guided_velocity(model_fn, x, t, y, null, cfg_scale, dtype):
    """The guided velocity on the doubled batch, and the doubled input and time (for the score)."""
    inp, lab = jnp.concatenate([x, x]), jnp.concatenate([y, jnp.full_like(y, null)])
    time = jnp.full((inp.shape[0],), t, x.dtype)
    v = model_fn(inp.astype(jnp.float32), time.astype(jnp.float32), lab).astype(x.dtype)
    return v, inp, time


def _velocity(model_fn, x, t, y, guide, cfg_scale, null):
    """REPA's model call at one time, guided where `guide` (a traced bool): (B,) velocity, float state."""
    def plain(_):
        return model_fn(x.astype(jnp.float32), jnp.full((x.shape[0],), t, jnp.float32), y).astype(x.dtype)

    def guided(_):
        v, _, _ = _guided_velocity(model_fn, x, t, y, null, cfg_scale, x.dtype)
        cond, uncond = jnp.split(v, 2)
        return uncond + cfg_scale * (cond - uncond)
    return jax.lax.cond(guide, guided, plain, None)


def _guide_mask(ts: np.ndarray, cfg_scale: float, low: float, high: float) -> np.ndarray:
    return np.array([cfg_scale > 1.0 and low <= t <= high for t in ts], bool)


def _state_dtype():
    return jnp.result_type(float)   # float64 where x64 is on (also inside a `jax.enable_x64` context)


def euler_sampler(model_fn: Callable, x_T: jax.Array, y: jax.Array, *, num_steps: int = 20, heun: bool = False,
                  cfg_scale: float = 1.0, guidance_low: float = 0.0, guidance_high: float = 1.0,
                  null_label: int = 1000) -> jax.Array:
    """REPA's euler_sampler: x at t = 0 from x_T at t = 1."""
    dtype = _state_dtype()
    ts = torch_linspace(1.0, 0.0, num_steps + 1)
    guide = _guide_mask(ts[:-1], cfg_scale, guidance_low, guidance_high)
    corrector = np.arange(num_steps) < num_steps - 1 if heun else np.zeros(num_steps, bool)

    def step(x, k):
        t_cur, t_next, g, c = k
        d = _velocity(model_fn, x, t_cur, y, g, cfg_scale, null_label)
        x_next = x + (t_next - t_cur) * d

        def heun_step(_):
            d2 = _velocity(model_fn, x_next, t_next, y, g, cfg_scale, null_label)  # REPA: guidance from t_cur
            return x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
        return jax.lax.cond(c, heun_step, lambda _: x_next, None), None

    xs = (jnp.asarray(ts[:-1], dtype), jnp.asarray(ts[1:], dtype), jnp.asarray(guide), jnp.asarray(corrector))
    x, _ = jax.lax.scan(step, x_T.astype(dtype), xs)
    return x


def _score(v, x, t, path):
    """REPA's get_score_from_velocity: (alpha / d_alpha * v - x) / (sigma^2 - alpha / d_alpha * d_sigma * sigma)."""
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    alpha, sigma, d_alpha, d_sigma = interpolant(path, t)
    ratio = alpha / d_alpha
    return (ratio * v - x) / (sigma ** 2 - ratio * d_sigma * sigma)


def _drift(model_fn, x, t, y, guide, cfg_scale, null, path):
    """v - 0.5 * (2t) * score, computed on the (doubled) batch, then guided (guidance acts on the drift)."""
    def plain(_):
        time = jnp.full((x.shape[0],), t, x.dtype)
        v = model_fn(x.astype(jnp.float32), time.astype(jnp.float32), y).astype(x.dtype)
        return v - t * _score(v, x, time, path)

    def guided(_):
        v, inp, time = _guided_velocity(model_fn, x, t, y, null, cfg_scale, x.dtype)
        cond, uncond = jnp.split(v - t * _score(v, inp, time, path), 2)
        return uncond + cfg_scale * (cond - uncond)
    return jax.lax.cond(guide, guided, plain, None)


def euler_maruyama_sampler(model_fn: Callable, x_T: jax.Array, y: jax.Array, key: jax.Array | None = None, *,
                           num_steps: int = 20, cfg_scale: float = 1.0, guidance_low: float = 0.0,
                           guidance_high: float = 1.0, path: str = "linear", null_label: int = 1000,
                           noise: jax.Array | None = None, noise_fn: Callable | None = None) -> jax.Array:
    """REPA's euler_maruyama_sampler. Step i's noise is normal(fold_in(key, i)); noise[i] when `noise` is given
    ((num_steps - 1,) + x_T.shape: the same draws as another implementation); noise_fn(i, x) when given."""
    if noise is not None:
        noise_fn = lambda i, x: noise[i].astype(x.dtype)  # noqa: E731
    dtype = _state_dtype()
    ts = np.concatenate([torch_linspace(1.0, 0.04, num_steps), [0.0]])
    guide = _guide_mask(ts[:-1], cfg_scale, guidance_low, guidance_high)

    def step(x, k):
        i, t_cur, t_next, g = k
        dt = t_next - t_cur
        eps = (noise_fn(i, x).astype(dtype) if noise_fn is not None
               else jax.random.normal(jax.random.fold_in(key, i), x.shape, dtype))
        d = _drift(model_fn, x, t_cur, y, g, cfg_scale, null_label, path)
        return x + d * dt + jnp.sqrt(2 * t_cur) * eps * jnp.sqrt(jnp.abs(dt)), None

    n = num_steps - 1
    xs = (jnp.arange(n), jnp.asarray(ts[:n], dtype), jnp.asarray(ts[1:n + 1], dtype), jnp.asarray(guide[:n]))
    x, _ = jax.lax.scan(step, x_T.astype(dtype), xs)
    t_cur, t_next = ts[-2], ts[-1]
    d = _drift(model_fn, x, jnp.asarray(t_cur, dtype), y, jnp.asarray(guide[-1]), cfg_scale, null_label, path)
    return x + (t_next - t_cur) * d


