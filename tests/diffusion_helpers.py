"""Shared set-up of the Gaussian diffusion tests (tests/test_diffusion_gaussian.py,
test_diffusion_respace.py, test_diffusion_ancestral.py): the float64 numpy statement of the formulas,
fixed data and a fixed simple model (in jnp, numpy and torch), and the relative-error checks.

Our arrays are channels-last (NHWC); the reference's are NCHW. Relative errors are
max|ours - expected| / max|expected| over an array unless stated otherwise.
"""

import math

import jax.numpy as jnp
import numpy as np

import helpers

T = 1000
SHAPE = (4, 4, 4, 2)   # (B, H, W, C), channels last
B, C = SHAPE[0], SHAPE[-1]
LN2 = math.log(2.0)
TOL = 1e-5             # relative, float32 (ours / reference) against float64 (numpy) or float32 (torch)

# Largest relative errors seen, by name (printed with `pytest -s`).
MEASURED: dict = {}


def report_measured():
    """This file's largest errors (its module fixture calls this at the end)."""
    helpers.report_measured(MEASURED)


def check(name, ours, expected, tol=TOL):
    helpers.check_rel(MEASURED, name, ours, expected, tol)


def check_each(name, ours, expected, tol=TOL, atol=1e-7):
    """Per-example loss terms: |ours - expected| <= tol * |expected| + atol elementwise. The atol (in bits)
    covers float32 cancellation in the KL at large t, where the term itself is ~1e-3 bits."""
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    assert np.all(np.isfinite(ours)), "non-finite values"
    diff = np.abs(ours - expected)
    err = float(np.max(diff / np.abs(expected)))
    MEASURED[name] = max(err, MEASURED.get(name, 0.0))
    MEASURED[name + " [max abs]"] = max(float(diff.max()), MEASURED.get(name + " [max abs]", 0.0))
    print(f"{name}: elementwise rel err {err:.2e}, max abs {diff.max():.2e}")
    assert np.all(diff <= tol * np.abs(expected) + atol), f"{name}: rel err {err:.3e}, abs {diff.max():.3e}"


# ---------------------------------------------------------------------------------------------
# The float64 numpy statement of the formulas.
# ---------------------------------------------------------------------------------------------

def np_timesteps(respacing: str) -> np.ndarray:
    """Kept original timesteps, written independently of the package (specs used below only)."""
    if respacing == "":
        return np.arange(T)
    if respacing == "250":
        return np.array(sorted({round(i * 999 / 249) for i in range(250)}))  # round half to even
    if respacing == "10":
        return np.arange(10) * 111
    raise KeyError(respacing)


def np_schedule(respacing: str = "") -> dict:
    base = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    abar_full = np.cumprod(1.0 - base)
    use = np_timesteps(respacing)
    kept = abar_full[use]
    betas = 1.0 - kept / np.append(1.0, kept[:-1])
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - ac_prev) / (1.0 - ac)
    return dict(
        timestep_map=use, betas=betas, log_betas=np.log(betas),
        alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac), sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
        posterior_variance=pv,
        posterior_log_variance_clipped=np.log(np.concatenate([[pv[1]], pv[1:]])),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        fixed_large_variance=np.concatenate([[pv[1]], betas[1:]]),
        abar_full=abar_full,
    )


def g(arr, t):
    """arr[t] gathered as float32 (the documented behaviour), then used in float64, for NHWC."""
    return arr.astype(np.float32).astype(np.float64)[np.asarray(t)][:, None, None, None]


def np_normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def np_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def np_dgll(x, means, log_scales):
    centered = x - means
    inv = np.exp(-log_scales)
    cdf_plus = np_cdf(inv * (centered + 1.0 / 255.0))
    cdf_min = np_cdf(inv * (centered - 1.0 / 255.0))
    return np.where(x < -0.999, np.log(np.maximum(cdf_plus, 1e-12)),
                    np.where(x > 0.999, np.log(np.maximum(1.0 - cdf_min, 1e-12)),
                             np.log(np.maximum(cdf_plus - cdf_min, 1e-12))))


def np_mean_flat(x):
    return x.reshape(x.shape[0], -1).mean(axis=1)


def np_q_sample(s, x0, t, noise):
    return g(s["sqrt_alphas_cumprod"], t) * x0 + g(s["sqrt_one_minus_alphas_cumprod"], t) * noise


def np_q_posterior(s, x0, xt, t):
    mean = g(s["posterior_mean_coef1"], t) * x0 + g(s["posterior_mean_coef2"], t) * xt
    return mean, g(s["posterior_variance"], t), g(s["posterior_log_variance_clipped"], t)


def np_p_mean_variance(s, out, x, t, var_type="learned_range"):
    out = np.asarray(out, np.float64)
    if var_type == "learned_range":
        eps, v = out[..., :C], out[..., C:]
        frac = (v + 1.0) / 2.0
        log_var = frac * g(s["log_betas"], t) + (1.0 - frac) * g(s["posterior_log_variance_clipped"], t)
        var = np.exp(log_var)
    elif var_type == "fixed_large":
        eps = out
        var = np.broadcast_to(g(s["fixed_large_variance"], t), x.shape)
        log_var = np.broadcast_to(g(np.log(s["fixed_large_variance"]), t), x.shape)
    else:
        eps = out
        var = np.broadcast_to(g(s["posterior_variance"], t), x.shape)
        log_var = np.broadcast_to(g(s["posterior_log_variance_clipped"], t), x.shape)
    pred_x0 = g(s["sqrt_recip_alphas_cumprod"], t) * x - g(s["sqrt_recipm1_alphas_cumprod"], t) * eps
    mean, _, _ = np_q_posterior(s, pred_x0, x, t)
    return dict(mean=mean, variance=var, log_variance=log_var, pred_xstart=pred_x0)


def np_vb_bpd(s, out, x0, xt, t):
    true_mean, _, true_lv = np_q_posterior(s, x0, xt, t)
    p = np_p_mean_variance(s, out, xt, t)
    kl = np_mean_flat(np_normal_kl(true_mean, true_lv, p["mean"], p["log_variance"])) / LN2
    nll = np_mean_flat(-np_dgll(x0, p["mean"], 0.5 * p["log_variance"])) / LN2
    return np.where(np.asarray(t) == 0, nll, kl)


# ---------------------------------------------------------------------------------------------
# Fixed data and a fixed simple model, written once in numpy and applied in jnp and torch.
# ---------------------------------------------------------------------------------------------

def data(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    x0 = np.clip(rng.standard_normal(shape) * 0.6, -1, 1).astype(np.float32)
    x0.reshape(shape[0], -1)[:, 0] = -1.0   # exact edge values: the open bins of the decoder NLL
    x0.reshape(shape[0], -1)[:, 1] = 1.0
    noise = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    return x0, noise, x


_rng = np.random.default_rng(1234)
W = (_rng.standard_normal((C, 2 * C)) * 0.5).astype(np.float32)   # x (C channels) -> 2C channels
FREQS = (1.0 + np.arange(2 * C)).astype(np.float32) / 150.0


def jnp_model(x, t):
    """x @ W + 0.3 sin(t * freqs): the output has 2C channels (eps, v), t is the ORIGINAL timestep."""
    tv = 0.3 * jnp.sin(t.astype(jnp.float32)[:, None] * FREQS)
    return jnp.einsum("nhwc,co->nhwo", x, W) + tv[:, None, None, :]


ABAR_FULL = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T, dtype=np.float64))


def loop_model(x, t):
    """A stable model for whole chains: the optimal eps for data ~ N(0, 0.25 I), plus a v that varies."""
    a = jnp.asarray(ABAR_FULL, jnp.float32)[t][:, None, None, None]
    eps = jnp.sqrt(1 - a) * x / (0.25 * a + 1 - a)
    return jnp.concatenate([eps, jnp_model(x, t)[..., C:] * 0.5], axis=-1)


def np_model(x, t):
    tv = 0.3 * np.sin(np.asarray(t, np.float64)[:, None] * FREQS.astype(np.float64))
    return np.einsum("nhwc,co->nhwo", np.asarray(x, np.float64), W.astype(np.float64)) + tv[:, None, None, :]


# ---------------------------------------------------------------------------------------------
# The same model on the reference's NCHW torch tensors.
# ---------------------------------------------------------------------------------------------

def torch_model_fn(seen):
    import torch
    w, f = torch.from_numpy(W), torch.from_numpy(FREQS)

    def model(x, t, **kwargs):   # NCHW
        seen.append(t.clone())
        tv = 0.3 * torch.sin(t.to(torch.float32)[:, None] * f)
        return torch.einsum("nchw,co->nohw", x, w) + tv[:, :, None, None]
    return model


def nchw(a):
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)
