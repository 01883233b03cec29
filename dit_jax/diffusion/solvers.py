"""Few-step samplers: DPM-Solver++ multistep (orders 2 and 3), UniPC (bh2) and DDIM, with the
semantics of diffusers' DPMSolverMultistepScheduler, UniPCMultistepScheduler and DDIMScheduler.

Everything a step needs that does not depend on the sample (timesteps, alpha/sigma, the multistep
weights, the order used at each step) is a function of the schedule and the number of steps,
both static, so it is computed once in float64 numpy (`step_coefficients`) and each step of the
compiled loop is a fixed linear combination of the state:

    m_i    = a_i x + b_i eps                                (the x0 prediction, DPM++ and UniPC)
    x      = kx_i x_last + kt_i m_i + k1_i m_{i-1} + k2_i m_{i-2}      (UniPC's corrector, i > 0)
    x_next = px_i x + p0_i m_i + p1_i m_{i-1} + p2_i m_{i-2}
    x_next = dx_i x + de_i eps + dn_i noise_i                            (DDIM)

A step's order (first order at the start and, as diffusers, at the end) is just which weights
are zero. The loop is one `lax.scan` whose carry holds the sample and the previous x0
predictions, so `solve` jit-compiles for any static `steps`. `solve` = `solver_tables` (validation,
timesteps, weights) + `run_solver` (the loop); a caller that wants one compiled program for several
spacings or schedules of the same length can pass the tables to a jitted `run_solver` as arguments.

diffusers computes its weights in float32 from a float32 cumulative product; ours come from the
float64 training schedule, so the two differ by float32 rounding only (the parity tests measure
it). The final step goes to sigma = 0 (diffusers' final_sigmas_type="zero"): the last DPM++ and
UniPC step returns the x0 prediction.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SOLVERS = ("ddim", "dpm++2m", "dpm++3m", "unipc")
SPACINGS = ("linspace", "leading", "trailing")
_ORDER = {"dpm++2m": 2, "dpm++3m": 3, "unipc": 2}   # unipc: diffusers' default solver_order
# The state each table multiplies; a sampler uses some of them.
_X0_KEYS = ("a", "b")
_CORRECTOR_KEYS = ("kx", "kt", "k1", "k2", "kk")
_PREDICTOR_KEYS = ("px", "p0", "p1", "p2")
_DDIM_KEYS = ("dx", "de", "dn")


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {tuple(choices)}, got {value!r}")


def solver_timesteps(num_train_timesteps: int, steps: int, spacing: str, sampler: str = "dpm++2m") -> np.ndarray:
    """The decreasing original timesteps the model is evaluated at, as diffusers' schedulers set them.

    DPMSolverMultistepScheduler and UniPCMultistepScheduler (samplers dpm++2m, dpm++3m, unipc)
    place steps + 1 points and drop the last (t = 0 for "linspace" and "leading"); DDIMScheduler
    ("ddim") places `steps` points and keeps t = 0. "trailing" is the same for all:
    round(arange(T, 0, -T/steps)) - 1, which always starts at T - 1. steps_offset is 0.
    """
    _check_choice("sampler", sampler, SOLVERS)
    _check_choice("spacing", spacing, SPACINGS)
    T, n = int(num_train_timesteps), int(steps)
    if not 1 <= n <= T:
        raise ValueError(f"steps must be between 1 and the {T} training timesteps, got {steps}")
    ddim = sampler == "ddim"
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n if ddim else n + 1).round()[::-1]
        ts = ts if ddim else ts[:-1]
    elif spacing == "leading":
        ratio = T // n if ddim else T // (n + 1)
        ts = (np.arange(0, n if ddim else n + 1) * ratio).round()[::-1]
        ts = ts if ddim else ts[:-1]
    else:
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    ts = ts.astype(np.int64)
    if len(ts) != n or np.any(np.diff(ts) >= 0):
        raise ValueError(f"spacing {spacing!r} does not give {n} distinct timesteps out of {T} "
                         f"(got {len(np.unique(ts))}); use fewer steps or spacing 'trailing'")
    return ts


def _lambdas(alpha, sigma):
    """log(alpha / sigma), +inf at the final sigma = 0."""
    with np.errstate(divide="ignore"):
        return np.log(alpha) - np.log(sigma)


def step_coefficients(alphas_cumprod: np.ndarray, sampler: str, timesteps: np.ndarray, *,
                      lower_order_final: bool = True, eta: float = 0.0, set_alpha_to_one: bool = True) -> dict:
    """Per-step weights (float64 arrays of length len(timesteps)) of the update in the module doc.

    The orders follow diffusers' `step`: DPM-Solver++ (midpoint) uses first order at step 0 and at
    the last step (always, as the final sigma is zero), second order at step 1 and, for fewer
    than 15 steps with lower_order_final, at the second-to-last step. UniPC's predictor uses order
    min(2, steps - i, i + 1) (lower_order_final) and its corrector at step i the order of step
    i - 1's predictor. DDIM steps from t to t - T // steps (the final alpha_bar is 1 with
    set_alpha_to_one, else alpha_bar[0]), as DDIMScheduler, whatever the spacing. One function per
    solver below, as diffusers has one scheduler per solver.
    """
    ac = np.asarray(alphas_cumprod, np.float64)
    ts = np.asarray(timesteps, np.int64)
    n = len(ts)
    z = {k: np.zeros(n) for k in _X0_KEYS + _CORRECTOR_KEYS + _PREDICTOR_KEYS + _DDIM_KEYS}
    if sampler == "ddim":
        return _ddim_coefficients(ac, ts, z, eta, set_alpha_to_one)
    # alpha, sigma and lambda at each step's timestep and, at index n, the final sigma = 0.
    alpha = np.append(np.sqrt(ac[ts]), 1.0)
    sigma = np.append(np.sqrt(1.0 - ac[ts]), 0.0)
    lam = _lambdas(alpha, sigma)
    z["a"], z["b"] = 1.0 / alpha[:n], -sigma[:n] / alpha[:n]   # m = (x - sigma eps) / alpha
    z["kk"][:] = 1.0   # no corrector: x passes through
    if sampler == "unipc":
        return _unipc_coefficients(alpha, sigma, lam, z, _ORDER[sampler], lower_order_final)
    return _dpm_solver_coefficients(alpha, sigma, lam, z, _ORDER[sampler], lower_order_final)


def _ddim_coefficients(ac: np.ndarray, ts: np.ndarray, z: dict, eta: float, set_alpha_to_one: bool) -> dict:
    """DDIMScheduler: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std noise,
    x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    T, n = len(ac), len(ts)
    a_t = ac[ts]
    prev = ts - T // n
    final = 1.0 if set_alpha_to_one else ac[0]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
    std = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    z["dx"] = np.sqrt(a_prev / a_t)
    z["de"] = np.sqrt(1 - a_prev - std**2) - np.sqrt(a_prev * (1 - a_t) / a_t)
    z["dn"] = std
    return z


def _dpm_solver_coefficients(alpha, sigma, lam, z: dict, solver_order: int, lower_order_final: bool) -> dict:
    """DPMSolverMultistepScheduler (DPM-Solver++, midpoint), orders 1 to `solver_order`."""
    n = len(z["px"])
    for i in range(n):
        s0, t = i, i + 1
        h = lam[t] - lam[s0]
        coef = np.zeros(3)   # on m_i, m_{i-1}, m_{i-2}
        lof_second = i == n - 2 and lower_order_final and n < 15
        if solver_order == 1 or i < 1 or i == n - 1:
            order = 1
        elif solver_order == 2 or i < 2 or lof_second:
            order = 2
        else:
            order = 3
        A = alpha[t] * np.expm1(-h)   # alpha_t (e^-h - 1)
        coef[0] = -A
        if order == 2:   # midpoint: - A/2 D1, D1 = (m_i - m_{i-1}) / r0
            r0 = (lam[s0] - lam[s0 - 1]) / h
            coef += -0.5 * A * np.array([1.0, -1.0, 0.0]) / r0
        elif order == 3:
            r0, r1 = (lam[s0] - lam[s0 - 1]) / h, (lam[s0 - 1] - lam[s0 - 2]) / h
            d10 = np.array([1.0, -1.0, 0.0]) / r0
            d11 = np.array([0.0, 1.0, -1.0]) / r1
            D1 = d10 + r0 / (r0 + r1) * (d10 - d11)
            D2 = (d10 - d11) / (r0 + r1)
            Bc = alpha[t] * (np.expm1(-h) / h + 1.0)
            Cc = alpha[t] * ((np.expm1(-h) + h) / h**2 - 0.5)
            coef += Bc * D1 - Cc * D2
        z["px"][i] = sigma[t] / sigma[s0]
        z["p0"][i], z["p1"][i], z["p2"][i] = coef
    return z


def _unipc_coefficients(alpha, sigma, lam, z: dict, solver_order: int, lower_order_final: bool) -> dict:
    """UniPCMultistepScheduler (bh2): a corrector of x_i (from step 1 on), then the predictor."""
    n = len(z["px"])
    prev_order = 0
    for i in range(n):
        s0, t = i, i + 1
        h = lam[t] - lam[s0]
        coef = np.zeros(3)   # on m_i, m_{i-1}, m_{i-2}
        if i > 0:   # correct x_i (the last predictor's output) with m_i; x_last is x_{i-1} corrected
            z["kx"][i] = sigma[i] / sigma[i - 1]
            z["kt"][i], z["k1"][i], z["k2"][i] = _unipc_corrector(alpha, lam, i, prev_order)
            z["kk"][i] = 0.0
        order = min(solver_order, n - i) if lower_order_final else solver_order
        order = min(order, i + 1)
        hh = -h
        h_phi_1 = np.expm1(hh)
        coef[0] = -alpha[t] * h_phi_1
        if order == 2:   # rhos_p = 0.5, D1 = (m_{i-1} - m_i) / r, r = (lam_{i-1} - lam_i) / h
            r = (lam[i - 1] - lam[s0]) / h
            w = alpha[t] * np.expm1(hh) * 0.5 / r
            coef[0] += w
            coef[1] -= w
        prev_order = order
        z["px"][i] = sigma[t] / sigma[s0]
        z["p0"][i], z["p1"][i], z["p2"][i] = coef
    return z


def _unipc_corrector(alpha, lam, i: int, prev_order: int) -> np.ndarray:
    """UniPC's corrector weights at step i on m_i, m_{i-1}, m_{i-2}:
    x = ratio x_last - base m_{i-1} - alpha B_h (sum_k rho_k (m_{i-1-k} - m_{i-1}) / r_k + rho_last (m_i - m_{i-1}))."""
    hc = lam[i] - lam[i - 1]
    hh = -hc
    h_phi_1 = np.expm1(hh)
    B_h = np.expm1(hh)   # bh2
    base = alpha[i] * h_phi_1
    if prev_order == 1:
        rhos = np.array([0.5])
        rks = np.array([1.0])
    else:
        rks = np.array([(lam[i - 2] - lam[i - 1]) / hc, 1.0])
        R = np.stack([rks ** k for k in range(prev_order)])
        b, h_phi_k, fact = [], h_phi_1 / hh - 1.0, 1
        for k in range(1, prev_order + 1):
            b.append(h_phi_k * fact / B_h)
            fact *= k + 1
            h_phi_k = h_phi_k / hh - 1.0 / fact
        rhos = np.linalg.solve(R, np.array(b))
    w = alpha[i] * B_h
    c = np.zeros(3)   # on m_i, m_{i-1}, m_{i-2}
    c[1] -= base
    c[0] -= w * rhos[-1]
    c[1] += w * rhos[-1]
    if prev_order == 2:
        c[2] -= w * rhos[0] / rks[0]
        c[1] += w * rhos[0] / rks[0]
    return c


def _validate(alphas_cumprod, sampler, steps, spacing, lower_order_final, eta, key_given, timesteps) -> np.ndarray:
    _check_choice("sampler", sampler, SOLVERS)
    _check_choice("spacing", spacing, SPACINGS)
    ac = np.asarray(alphas_cumprod, np.float64)
    if ac.ndim != 1 or len(ac) < 2 or not np.all((ac > 0) & (ac < 1)) or np.any(np.diff(ac) >= 0):
        raise ValueError("alphas_cumprod must be the training schedule: a 1-D array, decreasing, in (0, 1)")
    T = len(ac)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer between 1 and the {T} training timesteps, got {steps!r}")
    if not isinstance(eta, (int, float)) or eta < 0:
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    if eta > 0 and sampler != "ddim":
        raise ValueError(f"eta applies to the sampler 'ddim' only; {sampler!r} is deterministic (use eta=0)")
    if eta > 0 and not key_given:
        raise ValueError("ddim with eta > 0 draws noise: pass a key")
    if sampler == "unipc" and not lower_order_final:
        raise ValueError("unipc needs lower_order_final=True: a second-order last step into sigma = 0 is "
                         "undefined (diffusers returns inf there)")
    if timesteps is None:
        return solver_timesteps(T, steps, spacing, sampler)
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or len(ts) != steps or not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"timesteps must be {steps} integers (one per step), got {np.asarray(timesteps).tolist()}")
    if np.any(ts < 0) or np.any(ts >= T) or np.any(np.diff(ts) >= 0):
        raise ValueError(f"timesteps must decrease strictly within [0, {T - 1}], got {ts.tolist()}")
    return ts.astype(np.int64)


def solver_tables(alphas_cumprod: np.ndarray, *, sampler: str, steps: int, spacing: str = "linspace",
                  lower_order_final: bool = True, eta: float = 0.0, set_alpha_to_one: bool = True,
                  timesteps: Sequence[int] | None = None, key_given: bool = True) -> dict:
    """Validated per-step tables for `run_solver`: the weights `sampler` uses (float32) and "t"
    (int32), each of length `steps`. Arguments as `solve`'s (key_given: whether a key will come)."""
    ts = _validate(alphas_cumprod, sampler, steps, spacing, lower_order_final, eta, key_given, timesteps)
    z = step_coefficients(alphas_cumprod, sampler, ts, lower_order_final=lower_order_final, eta=eta,
                          set_alpha_to_one=set_alpha_to_one)
    used = _DDIM_KEYS if sampler == "ddim" else _X0_KEYS + _PREDICTOR_KEYS + (
        _CORRECTOR_KEYS if sampler == "unipc" else ())
    tables = {k: np.asarray(z[k], np.float32) for k in used}
    tables["t"] = np.asarray(ts, np.int32)
    return tables


def run_solver(tables: dict, model_fn: Callable[[jax.Array, jax.Array], jax.Array], x_T: jax.Array, *,
               sampler: str, key: jax.Array | None = None, return_trajectory: bool = False):
    """The sampling loop of `solve` on tables from `solver_tables` (which may be traced arrays, so
    one compiled program serves every spacing and schedule of a given length). With a key (DDIM),
    step i adds dn_i * normal(fold_in(key, i)); without, no noise is drawn."""
    _check_choice("sampler", sampler, SOLVERS)
    x = jnp.asarray(x_T, jnp.float32)
    c = x.shape[-1]
    xs = dict(tables)
    xs["i"] = jnp.arange(len(tables["t"]), dtype=jnp.int32)
    noisy = sampler == "ddim" and key is not None

    def eps_of(x, t):
        out = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32)).astype(jnp.float32)
        if out.shape[-1] not in (c, 2 * c):
            raise ValueError(f"model_fn must return {c} (eps) or {2 * c} (eps, variance) channels, "
                             f"got {out.shape[-1]}")
        return out[..., :c]

    def body(carry, s):
        x, x_last, m1, m2 = carry
        eps = eps_of(x, s["t"])
        if sampler == "ddim":
            x_next = s["dx"] * x + s["de"] * eps
            if noisy:
                x_next = x_next + s["dn"] * jax.random.normal(jax.random.fold_in(key, s["i"]), x.shape, jnp.float32)
            return (x_next, x_last, m1, m2), (x_next if return_trajectory else None)
        m = s["a"] * x + s["b"] * eps
        if sampler == "unipc":   # step 0 has kk = 1 and zero weights elsewhere: x passes through
            x = s["kk"] * x + s["kx"] * x_last + s["kt"] * m + s["k1"] * m1 + s["k2"] * m2
        x_next = s["px"] * x + s["p0"] * m + s["p1"] * m1 + s["p2"] * m2
        return (x_next, x, m, m1), (x_next if return_trajectory else None)

    zeros = jnp.zeros_like(x)
    (x0, _, _, _), traj = jax.lax.scan(body, (x, zeros, zeros, zeros), xs)
    return (x0, traj) if return_trajectory else x0


def solve(alphas_cumprod: np.ndarray, model_fn: Callable[[jax.Array, jax.Array], jax.Array], x_T: jax.Array, *,
          sampler: str, steps: int, spacing: str = "linspace", lower_order_final: bool = True, eta: float = 0.0,
          key: jax.Array | None = None, return_trajectory: bool = False, set_alpha_to_one: bool = True,
          timesteps: Sequence[int] | None = None):
    """Sample from x_T in `steps` model evaluations; returns x_0, or (x_0, the (steps, *x_T.shape)
    stack of the sample after each step) with return_trajectory.

    alphas_cumprod: the TRAINING schedule (all T steps, float64), e.g. `create_diffusion("").alphas_cumprod`.
    model_fn(x, t): channels-last x (float32), t a (B,) int32 array of original timesteps in [0, T);
    returns eps, or 2C channels (eps, then the learned variance, which is dropped as diffusers' DiT
    pipeline does). sampler: one of SOLVERS; spacing: one of SPACINGS (diffusers' timestep_spacing).
    lower_order_final: as diffusers (DPM-Solver++ lowers the last two steps' order for fewer than 15
    steps; the last step is first order anyway; unipc needs True). eta: DDIM's noise, step i (0 the
    first) draws normal(fold_in(key, i)). set_alpha_to_one: DDIM's final alpha_bar (1, else
    alpha_bar[0]). timesteps: custom decreasing original timesteps (len == steps) in place of the
    spacing's. Static (Python) values: everything but x_T, key and what model_fn closes over.
    """
    tables = solver_tables(alphas_cumprod, sampler=sampler, steps=steps, spacing=spacing,
                           lower_order_final=lower_order_final, eta=eta, set_alpha_to_one=set_alpha_to_one,
                           timesteps=timesteps, key_given=key is not None)
    return run_solver({k: jnp.asarray(v) for k, v in tables.items()}, model_fn, x_T, sampler=sampler,
                      key=key if sampler == "ddim" and eta > 0 else None, return_trajectory=return_trajectory)
