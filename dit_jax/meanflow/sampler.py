"""MeanFlow's sampler: the official `sample_one_step` / `solver_step` over a time schedule.

One step from t to r moves by the network's average velocity over [r, t]:
z_r = z_t - (t - r) u(z_t, t, t - r, y). The official default schedule is [1, 0] (one network
evaluation from noise to data); k steps here walk the uniform grid linspace(1, 0, k + 1) (the official
code takes any grid as `sampling_timesteps`; linspace is its natural k-step choice). Guidance was
trained into u (omega, kappa), so sampling has no classifier-free guidance of its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dit_jax.meanflow.objective import UFn


def schedule(steps: int) -> jax.Array:
    """The k-step time grid from 1 (noise) to 0 (data): [1, 0] for one step, as the official default."""
    if steps < 1:
        raise ValueError(f"MeanFlow sampling needs steps >= 1, got {steps}")
    return jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)


def solver_step(u_fn: UFn, z_t: jax.Array, t: jax.Array, r: jax.Array, y: jax.Array) -> jax.Array:
    """z_r = z_t - (t - r) u(z_t, t, t - r, y); t, r: (B,)."""
    u = u_fn(z_t, t, t - r, y)
    return z_t - (t - r).reshape((-1,) + (1,) * (z_t.ndim - 1)) * u


def sample(u_fn: UFn, z: jax.Array, y: jax.Array, steps: int = 1) -> jax.Array:
    """From noise z (t = 1) to data (t = 0) in `steps` network evaluations (the official `generate`'s loop)."""
    grid = schedule(steps)
    b = z.shape[0]

    def body(i, z_i):
        return solver_step(u_fn, z_i, jnp.repeat(grid[i], b), jnp.repeat(grid[i + 1], b), y)
    return jax.lax.fori_loop(0, steps, body, z)
