"""SiT's ODE and SDE samplers, integrating t0 -> t1 (noise -> data), jit-compilable, float32 state.

ODE (`sample_ode`) on the probability-flow velocity (SiT's `get_drift`):
  - "euler", "heun": fixed steps over linspace(t0, t1, num_steps), i.e. num_steps - 1 intervals,
    as torchdiffeq's fixed-grid "euler" and "heun2" integrate SiT's grid;
  - "dopri5": adaptive Dormand-Prince 5(4) through diffrax, atol 1e-6, rtol 1e-3; the error is the
    RMS norm of the scaled error over the whole batch and the step size follows an I controller
    (safety 0.9, factors 0.2..10) and the first step follows Hairer's rule, as torchdiffeq's.
    Differences: diffrax's controller details, and diffrax stops exactly at t1 where torchdiffeq steps
    past t1 and interpolates back. The two solutions agree to the solver tolerance, not to rounding.
SDE (`sample_sde`): dx = [v + w(t) s] dt + sqrt(2 w(t)) dW with w a `diffusion_form`, Euler-Maruyama
("euler") or SiT's Heun ("heun"), num_steps - 1 steps of the constant dt = grid[1] - grid[0], then one
`last_step` at t1 = 1 - last_step_size ("Mean": a drift step without noise, "Tweedie": the denoised
mean, "Euler": a probability-flow step, None: nothing). Step i's noise is
normal(fold_in(key, i)), so a run is a pure function of (x_init, key).

The step functions take the noise explicitly so they can be compared with the reference step for
step. SiT's code evaluates the network twice per SDE drift (once for the velocity, once for the
score); here one evaluation gives both, so the count of network evaluations (`model_evaluations`)
is half of SiT's for SDEs, with identical values.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.transport.paths import DIFFUSION_FORMS, expand_t_like_x
from dit_jax.transport.transport import ModelFn, Transport, score_from_output, velocity_from_output, velocity_fn

ODE_METHODS = ("euler", "heun", "dopri5")
SDE_METHODS = ("euler", "heun")
LAST_STEPS = (None, "Mean", "Tweedie", "Euler")


def _check(what, value, choices):
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def _batch_t(t, x: jax.Array) -> jax.Array:
    return jnp.full((x.shape[0],), t, x.dtype)


def time_grid(t0: float, t1: float, num_steps: int) -> np.ndarray:
    """linspace(t0, t1, num_steps) in float32, computed in float64 so each point is correctly rounded."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (the grid includes both ends), got {num_steps}")
    return np.linspace(t0, t1, num_steps, dtype=np.float64).astype(np.float32)


def shift_grid(grid: np.ndarray, shift: float) -> np.ndarray:
    """LightningDiT's timestep shift: each t -> s t / (1 + (s - 1) t) for s > 0 (0 leaves the grid), in
    float32 as it computes it. t = 1 is data, so s < 1 moves the steps towards the noise end."""
    if shift < 0:
        raise ValueError(f"timestep_shift must be >= 0 (0: off), got {shift}")
    if shift == 0:
        return grid
    g, s = grid.astype(np.float32), np.float32(shift)
    return (s * g / (np.float32(1) + np.float32(shift - 1) * g)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# ODE
# ---------------------------------------------------------------------------------------------

def ode_euler_step(field: ModelFn, x, t0, t1):
    """One explicit Euler step of dx/dt = field(x, t) from t0 to t1 (torchdiffeq's "euler")."""
    dt = t1 - t0
    return x + dt * field(x, _batch_t(t0, x))


def ode_heun_step(field: ModelFn, x, t0, t1):
    """One Heun step (torchdiffeq's "heun2": k1 at t0, k2 at t0 + dt after a full Euler step)."""
    dt = t1 - t0
    k1 = field(x, _batch_t(t0, x))
    k2 = field(x + dt * k1, _batch_t(t0 + dt, x))
    return x + dt * (k1 * 0.5 + k2 * 0.5)


def _rms(x):
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def initial_step(field: ModelFn, x, t0: float, t1: float, atol: float, rtol: float, order: int = 5):
    """Hairer's first step size (Solving ODEs I, II.4), as torchdiffeq picks it for dopri5; signed t0 -> t1.

    diffrax would start from |dt| = 0.01 here (its own estimate is skipped for the terms it wraps),
    which costs a few steps on easy fields and makes loose tolerances no cheaper. Two evaluations.
    """
    direction = 1.0 if t1 >= t0 else -1.0
    scale = atol + jnp.abs(x) * rtol
    f0 = direction * field(x, _batch_t(t0, x))
    d0, d1 = _rms(x / scale), _rms(f0 / scale)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.maximum(d1, 1e-30))
    f1 = direction * field(x + h0 * f0, _batch_t(t0 + direction * h0, x))
    d2 = _rms((f1 - f0) / scale) / h0
    h1 = jnp.where((d1 <= 1e-15) & (d2 <= 1e-15), jnp.maximum(1e-6, h0 * 1e-3),
                   (0.01 / jnp.maximum(jnp.maximum(d1, d2), 1e-30)) ** (1.0 / order))
    return direction * jnp.minimum(100 * h0, h1)


def _dopri5(field: ModelFn, x, t0: float, t1: float, atol: float, rtol: float, max_steps: int):
    term = diffrax.ODETerm(lambda t, y, args: field(y, _batch_t(t, y)))
    sol = diffrax.diffeqsolve(
        term, diffrax.Dopri5(), t0=t0, t1=t1, dt0=initial_step(field, x, t0, t1, atol, rtol), y0=x,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    # Two evaluations for the first step size, f(t0) again inside diffrax, then 6 per attempted
    # (accepted or rejected) step (Dopri5 reuses its last stage); counted at run time in the tests.
    nfe = 6 * sol.stats["num_steps"] + 3
    return sol.ys[0], nfe


def sample_ode(transport: Transport, model_fn: ModelFn, x_init: jax.Array, *, method: str = "dopri5",
               num_steps: int = 50, atol: float = 1e-6, rtol: float = 1e-3, reverse: bool = False,
               max_steps: int = 4096, return_nfe: bool = False, timestep_shift: float = 0.0):
    """SiT's `Sampler.sample_ode(...)(x_init, model)[-1]`: the ODE solution at t1.

    reverse=True integrates data -> noise (t from 1 - t0 to 1 - t1). For dopri5, num_steps only sets
    SiT's output grid and does not change the solution at t1; it is ignored here. With return_nfe the
    number of network evaluations comes back too (an int for fixed steps, a traced int for dopri5).
    timestep_shift (LightningDiT's, `shift_grid`) moves the euler/heun grid; dopri5's solution at t1 does
    not depend on the output grid, so it ignores it, as torchdiffeq's does.
    """
    _check("ODE method", method, ODE_METHODS)
    t0, t1 = transport.time_interval(training=False, sde=False, reverse=reverse)
    field = velocity_fn(transport, model_fn)
    x = x_init.astype(jnp.float32)
    if method == "dopri5":
        x, nfe = _dopri5(field, x, t0, t1, atol, rtol, max_steps)
    else:
        grid = jnp.asarray(shift_grid(time_grid(t0, t1, num_steps), timestep_shift))
        step = ode_euler_step if method == "euler" else ode_heun_step
        x = jax.lax.fori_loop(0, num_steps - 1, lambda i, x: step(field, x, grid[i], grid[i + 1]), x)
        nfe = model_evaluations(method, num_steps)
    return (x, nfe) if return_nfe else x


# ---------------------------------------------------------------------------------------------
# SDE
# ---------------------------------------------------------------------------------------------

def sde_drift(transport: Transport, model_fn: ModelFn, x, t, diffusion_form: str, diffusion_norm: float):
    """(SDE drift v + w s, probability-flow velocity v, score s) from one network evaluation."""
    out = model_fn(x, t)
    v = velocity_from_output(transport, out, x, t)
    s = score_from_output(transport, out, x, t)
    w = transport.path_sampler.compute_diffusion(x, t, diffusion_form, diffusion_norm)
    return v + w * s, v, s


def sde_euler_step(transport: Transport, model_fn: ModelFn, x, t, dt, noise, *, diffusion_form: str = "sigma",
                   diffusion_norm: float = 1.0):
    """One Euler-Maruyama step at time t with step dt and standard normal `noise`: (x, mean_x)."""
    t = _batch_t(t, x)
    dw = noise * jnp.sqrt(dt)
    drift, _, _ = sde_drift(transport, model_fn, x, t, diffusion_form, diffusion_norm)
    diffusion = transport.path_sampler.compute_diffusion(x, t, diffusion_form, diffusion_norm)
    mean_x = x + drift * dt
    return mean_x + jnp.sqrt(2 * diffusion) * dw, mean_x


def sde_heun_step(transport: Transport, model_fn: ModelFn, x, t, dt, noise, *, diffusion_form: str = "sigma",
                  diffusion_norm: float = 1.0):
    """SiT's stochastic Heun step: noise first (x_hat), then a Heun step of the drift from x_hat.
    Returns (x, x_hat)."""
    t_cur = _batch_t(t, x)
    dw = noise * jnp.sqrt(dt)
    diffusion = transport.path_sampler.compute_diffusion(x, t_cur, diffusion_form, diffusion_norm)
    xhat = x + jnp.sqrt(2 * diffusion) * dw
    k1, _, _ = sde_drift(transport, model_fn, xhat, t_cur, diffusion_form, diffusion_norm)
    xp = xhat + dt * k1
    k2, _, _ = sde_drift(transport, model_fn, xp, t_cur + dt, diffusion_form, diffusion_norm)
    return xhat + 0.5 * dt * (k1 + k2), xhat


def sde_last_step(transport: Transport, model_fn: ModelFn, x, t1, *, last_step: str | None = "Mean",
                  last_step_size: float = 0.04, diffusion_form: str = "sigma", diffusion_norm: float = 1.0):
    """The noiseless final step at t1 (see the module docstring)."""
    _check("last_step", last_step, LAST_STEPS)
    if last_step is None:
        return x
    t = _batch_t(t1, x)
    drift, v, s = sde_drift(transport, model_fn, x, t, diffusion_form, diffusion_norm)
    if last_step == "Mean":
        return x + drift * last_step_size
    if last_step == "Euler":
        return x + v * last_step_size
    path = transport.path_sampler
    alpha = path.compute_alpha_t(expand_t_like_x(t, x))[0]
    sigma = path.compute_sigma_t(expand_t_like_x(t, x))[0]
    return x / alpha + (sigma ** 2) / alpha * s


def sde_interval(transport: Transport, *, diffusion_form: str, last_step: str | None,
                 last_step_size: float) -> tuple[float, float]:
    """(t0, t1) of the SDE loop; t1 is where the last step is taken."""
    return transport.time_interval(training=False, sde=True, diffusion_form=diffusion_form,
                                   last_step_size=0.0 if last_step is None else last_step_size)


def sample_sde(transport: Transport, model_fn: ModelFn, x_init: jax.Array, key: jax.Array, *,
               method: str = "euler", num_steps: int = 250, diffusion_form: str = "sigma",
               diffusion_norm: float = 1.0, last_step: str | None = "Mean", last_step_size: float = 0.04,
               noise_fn=None):
    """SiT's `Sampler.sample_sde(...)(x_init, model)[-1]`: num_steps - 1 SDE steps and the last step.

    noise_fn(key, i, x) gives step i's standard normal noise; by default normal(fold_in(key, i)).
    """
    _check("SDE method", method, SDE_METHODS)
    _check("diffusion_form", diffusion_form, DIFFUSION_FORMS)
    _check("last_step", last_step, LAST_STEPS)
    t0, t1 = sde_interval(transport, diffusion_form=diffusion_form, last_step=last_step,
                          last_step_size=last_step_size)
    if not t0 < t1:
        raise ValueError(f"the SDE runs forward in time; got t0={t0} >= t1={t1} (last_step_size too large?)")
    grid_np = time_grid(t0, t1, num_steps)
    grid = jnp.asarray(grid_np)
    dt = grid_np[1] - grid_np[0]          # SiT's constant step, float32
    step = sde_euler_step if method == "euler" else sde_heun_step
    noise_fn = noise_fn or (lambda k, i, x: jax.random.normal(jax.random.fold_in(k, i), x.shape, x.dtype))

    def body(i, x):
        noise = noise_fn(key, i, x)
        return step(transport, model_fn, x, grid[i], dt, noise, diffusion_form=diffusion_form,
                    diffusion_norm=diffusion_norm)[0]

    x = jax.lax.fori_loop(0, num_steps - 1, body, x_init.astype(jnp.float32))
    return sde_last_step(transport, model_fn, x, grid_np[-1], last_step=last_step, last_step_size=last_step_size,
                         diffusion_form=diffusion_form, diffusion_norm=diffusion_norm)


def model_evaluations(method: str, num_steps: int, *, sde: bool = False, last_step: str | None = "Mean") -> int:
    """Network evaluations of a fixed-step sampler (per sample; a guided batch runs the network on 2B rows).

    ODE: euler num_steps - 1, heun 2 (num_steps - 1); SDE: the same plus one for a last step other
    than None. dopri5 is adaptive: `sample_ode(..., return_nfe=True)` reports its count.
    """
    _check("method", method, SDE_METHODS if sde else ODE_METHODS)
    if method == "dopri5":
        raise ValueError("dopri5 is adaptive: use sample_ode(..., return_nfe=True) for its count")
    n = (num_steps - 1) * (1 if method == "euler" else 2)
    return n + (1 if sde and last_step is not None else 0)


def sample(transport: Transport, model_fn: ModelFn, x_init: jax.Array, key: jax.Array | None = None, *,
           mode: str = "ode", **kwargs):
    """`sample_ode` (mode "ode", no key needed) or `sample_sde` (mode "sde")."""
    _check("sampling mode", mode, ("ode", "sde"))
    if mode == "ode":
        return sample_ode(transport, model_fn, x_init, **kwargs)
    if key is None:
        raise ValueError("SDE sampling needs a key")
    return sample_sde(transport, model_fn, x_init, key, **kwargs)

