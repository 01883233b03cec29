"""Post-hoc EMA (EDM2, Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models"): power-function EMA profiles tracked during training, and the least-squares reconstruction of
any other profile from their snapshots afterwards.

A profile is named by its relative standard deviation `std` (the width of its averaging window as a
fraction of the training time); its power-function exponent gamma solves
gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2) = 0 (the largest real root), as EDM2's
`std_to_exp`. Tracked with beta_t = (1 - 1/t)^(gamma + 1) at the t-th update (t counts steps here;
EDM2 counts images, t_delta / t_next = B / (t B) is the same number at a constant batch size).

Reconstruction: a snapshot of profile (t_i, std_i) is a weighted average of the past parameters with a
known response; the weights X solve A X = B for the inner products of the responses (EDM2's
closed-form `power_function_correlation`), then each column is normalised to sum to one. All of it is
float64 numpy: a handful of snapshots, solved once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# EDM2's parse_std_list bound: exponent 0 (a plain average over all of training) has std sqrt(1/12) = 0.2887.
MAX_STD = 0.289


def exp_to_std(exp):
    """The relative standard deviation of the power-function profile with exponent `exp`."""
    exp = np.float64(exp)
    return np.sqrt((exp + 1) / (exp + 2) ** 2 / (exp + 3))


def std_to_exp(std):
    """The exponent of the profile with relative standard deviation `std` (array or scalar)."""
    std = np.asarray(std, np.float64)
    roots = [np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max() for t in std.reshape(-1) ** -2.0]
    return np.asarray(roots, np.float64).reshape(std.shape)


def correlation(a_ofs, a_std, b_ofs, b_std):
    """Inner product of the (normalised) responses of profile (a_std ending at a_ofs) and (b_std at b_ofs)."""
    a_exp, b_exp = std_to_exp(a_std), std_to_exp(b_std)
    a_ofs, b_ofs = np.float64(a_ofs), np.float64(b_ofs)
    ratio = a_ofs / b_ofs
    power = np.where(a_ofs < b_ofs, b_exp, -a_exp)
    return (a_exp + 1) * (b_exp + 1) * ratio ** power / ((a_exp + b_exp + 1) * np.maximum(a_ofs, b_ofs))


def _grams(in_ofs, in_std, out_ofs, out_std):
    col = lambda x: np.asarray(x, np.float64).reshape(-1, 1)  # noqa: E731
    row = lambda x: np.asarray(x, np.float64).reshape(1, -1)  # noqa: E731
    in_ofs, in_std = np.broadcast_arrays(in_ofs, in_std)
    out_ofs, out_std = np.broadcast_arrays(out_ofs, out_std)
    A = correlation(col(in_ofs), col(in_std), row(in_ofs), row(in_std))
    B = correlation(col(in_ofs), col(in_std), row(out_ofs), row(out_std))
    return A, B, correlation(out_ofs.reshape(-1), out_std.reshape(-1), out_ofs.reshape(-1), out_std.reshape(-1))


def solve_coefficients(in_ofs, in_std, out_ofs, out_std) -> np.ndarray:
    """X[in, out]: output profile j = sum_i X[i, j] * snapshot i (EDM2's solve_posthoc_coefficients)."""
    A, B, _ = _grams(in_ofs, in_std, out_ofs, out_std)
    X = np.linalg.solve(A, B)
    return X / np.sum(X, axis=0)


def fit_error(in_ofs, in_std, out_ofs, out_std, X: np.ndarray | None = None) -> np.ndarray:
    """Per output profile, the relative L2 distance between its response and the reconstruction's
    (||r_out - sum_i X_i r_i|| / ||r_out||, exact from the same inner products): how well the
    snapshots can reach that profile."""
    A, B, tt = _grams(in_ofs, in_std, out_ofs, out_std)
    X = solve_coefficients(in_ofs, in_std, out_ofs, out_std) if X is None else X
    sq = tt - 2 * np.sum(X * B, axis=0) + np.einsum("ij,ik,kj->j", X, A, X)
    return np.sqrt(np.maximum(sq, 0.0) / tt)


def update(tracked: tuple, params, step: jax.Array, exps: tuple[float, ...]) -> tuple:
    """The tracked profiles after the update that follows optimizer step `step` (0-based), as
    EDM2's PowerFunctionEMA.update with t_next = step + 1 updates: ema += (1 - beta) (params - ema),
    beta = (1 - 1 / t_next)^(gamma + 1), so the first update copies the params (beta = 0)."""
    t_next = step.astype(jnp.float32) + 1.0
    out = []
    for ema, exp in zip(tracked, exps):
        # log1p keeps 1 - 1/t accurate to the last bit for large t before the power.
        weight = 1.0 - jnp.exp((exp + 1.0) * jnp.log1p(-1.0 / t_next))
        out.append(jax.tree.map(lambda e, p: e + weight.astype(e.dtype) * (p.astype(e.dtype) - e), ema, params))
    return tuple(out)


def config_problems(config) -> list[str]:
    """What is wrong with config.phema (empty when fine or absent)."""
    if "phema" not in config:
        return []
    stds, every = tuple(config.phema.stds), config.phema.snapshot_every
    problems = [f"phema.stds: each std must be in (0, {MAX_STD}) (EDM2's range), got {s}"
                for s in stds if not 0 < s < MAX_STD]
    if len(set(stds)) != len(stds):
        problems.append(f"phema.stds must be distinct, got {stds}")
    if every < 0:
        problems.append(f"phema.snapshot_every must be >= 0, got {every}")
    if stds and every == 0:
        problems.append("phema.snapshot_every must be > 0 when phema.stds is set: the reconstruction reads the "
                        "snapshots (e.g. --config.phema.snapshot_every=total_steps/16 or more often)")
    return problems
