"""The Gaussian diffusion: schedule constants, respacing, every formula against a float64 numpy
statement written here, the stop-gradient of the vb term, parity with the PyTorch statement of the
reference, the jit-compiled sampling loop and classifier-free guidance.

Our arrays are channels-last (NHWC); the reference's are NCHW. Relative errors are
max|ours - expected| / max|expected| over an array unless stated otherwise.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion.gaussian import (GaussianDiffusion, approx_standard_normal_cdf, create_diffusion,
                                        discretized_gaussian_log_likelihood, normal_kl)
from dit_jax.diffusion.respace import space_timesteps
from dit_jax.diffusion.ancestral import (apply_guidance, ddim_sample, guidance_channels, guided_model_fn, p_sample,
                                        sample_loop)

T = 1000
SHAPE = (4, 4, 4, 2)   # (B, H, W, C), channels last
B, C = SHAPE[0], SHAPE[-1]
LN2 = math.log(2.0)
TOL = 1e-5             # relative, float32 (ours / reference) against float64 (numpy) or float32 (torch)

# Largest relative errors seen, by name (printed with `pytest -s`).
MEASURED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    if MEASURED:   # shown with `pytest -s`
        print("\nlargest relative errors measured:")
        for name in sorted(MEASURED):
            print(f"  {name:<62} {MEASURED[name]:.2e}")


def rel_err(ours, expected) -> float:
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    assert np.all(np.isfinite(ours)), "non-finite values"
    return float(np.max(np.abs(ours - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def check(name, ours, expected, tol=TOL):
    err = rel_err(ours, expected)
    MEASURED[name] = max(err, MEASURED.get(name, 0.0))
    print(f"{name}: rel err {err:.2e}")
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"


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
# 1. Schedule constants
# ---------------------------------------------------------------------------------------------

SCHEDULE_KEYS = ("betas", "log_betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                 "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
                 "posterior_mean_coef2", "fixed_large_variance")


@pytest.mark.parametrize("respacing", ["", "250"])
def test_schedule_constants(respacing):
    d = create_diffusion(respacing)
    s = np_schedule(respacing)
    n = len(s["timestep_map"])
    assert d.num_timesteps == n == (1000 if respacing == "" else 250)
    np.testing.assert_array_equal(d.timestep_map, s["timestep_map"])
    np.testing.assert_array_equal(np.asarray(d.model_timesteps(jnp.arange(n))), s["timestep_map"])
    for key in SCHEDULE_KEYS:
        ours = getattr(d, key)
        assert isinstance(ours, np.ndarray) and ours.dtype == np.float64 and ours.shape == (n,), key
        np.testing.assert_allclose(ours, s[key], rtol=1e-12, atol=0, err_msg=key)
    # Independent facts: the base betas, the clipped log variance, the kept alpha-bars.
    # (Like the reference, even "" re-derives the betas from alpha-bar ratios: equal to rtol 1e-12, not bitwise.)
    if respacing == "":
        np.testing.assert_allclose(d.betas, np.linspace(1e-4, 0.02, 1000, dtype=np.float64), rtol=1e-12, atol=0)
    assert d.posterior_variance[0] == 0.0
    assert d.posterior_log_variance_clipped[0] == d.posterior_log_variance_clipped[1] == np.log(
        d.posterior_variance[1])
    np.testing.assert_allclose(d.alphas_cumprod, s["abar_full"][s["timestep_map"]], rtol=1e-12, atol=0)
    assert d.var_type == "learned_range" and d.mean_type == "epsilon" and d.loss_type == "mse"
    assert abs(d.betas[0] - 1e-4) < 1e-16


@pytest.mark.parametrize("respacing", ["", "250", "ddim50"])
def test_schedule_constants_equal_reference(reference, respacing):
    _, ref_pkg = reference
    ref, d = ref_pkg.create_diffusion(respacing), create_diffusion(respacing)
    np.testing.assert_array_equal(d.timestep_map, ref.timestep_map)
    for key in SCHEDULE_KEYS[:-1]:
        if key == "log_betas":
            continue
        np.testing.assert_allclose(getattr(d, key), getattr(ref, key), rtol=1e-15, atol=0, err_msg=key)


# ---------------------------------------------------------------------------------------------
# 2. Respacing
# ---------------------------------------------------------------------------------------------

SPECS = [(1000, "250"), (1000, "100"), (1000, "50"), (1000, "25"), (1000, "10"), (1000, "ddim50"),
         (1000, "ddim25"), (1000, "ddim7"), (1000, "10,15,20"), (300, "10,15,20"), (1000, "3"), (1000, "7"),
         (1000, "1"), (4000, "250"), (1000, "1000"), (6, "3")]


def test_space_timesteps_250():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and steps == sorted(steps)
    assert steps[:4] == [0, 4, 8, 12] and steps[-3:] == [991, 995, 999]
    assert steps == sorted({round(i * 999 / 249) for i in range(250)})


def test_space_timesteps_ties_round_half_to_even():
    # (1000, "3"): stride 999/2 = 499.5 -> round(499.5) = 500 (even; half-up would agree here).
    assert space_timesteps(1000, "3") == [0, 500, 999]
    # (1000, "7"): stride 999/6 = 166.5 exactly, so the kept indices are 0, 166.5, 333, 499.5, 666, 832.5, 999
    # (all exact in binary). Half to even: 166.5 -> 166, 499.5 -> 500, 832.5 -> 832 (half-up: 167, 833).
    assert space_timesteps(1000, "7") == [0, 166, 333, 500, 666, 832, 999]
    # (6, "3"): stride 2.5 -> round(2.5) = 2 (half-up would give 3).
    assert space_timesteps(6, "3") == [0, 2, 5]
    # (1000, "25"): stride 999/24 = 41.625, 4 * 41.625 = 166.5 -> 166.
    assert 166 in space_timesteps(1000, "25") and 167 not in space_timesteps(1000, "25")
    # Sections: (300, "10,15,20") splits into 100-step sections starting at 0, 100, 200.
    s = space_timesteps(300, "10,15,20")
    assert len(s) == 45 and s[:2] == [0, 11] and s[9] == 99 and s[10] == 100 and s[-1] == 299
    # ddim: exact integer stride.
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim7") == list(range(0, 1000, 143))   # ceil(1000 / 143) == 7
    assert space_timesteps(1000, "1") == [0]


@pytest.mark.parametrize("num,spec", SPECS)
def test_space_timesteps_equal_reference(reference, num, spec):
    _, ref_diffusion = reference
    ours = space_timesteps(num, spec)
    assert isinstance(ours, list) and ours == sorted(set(ours))
    assert ours == sorted(ref_diffusion.respace.space_timesteps(num, spec))


@pytest.mark.parametrize("spec,match", [
    ("ddim600", "cannot create exactly 600 steps"),    # strides 1 and 2 give 1000 and 500 steps
    ("ddim1", "cannot create exactly 1 steps"),        # stride 999 still gives 2 steps
    ("abc", "bad respacing spec 'abc'"),
    ("10,abc", "bad respacing spec"),
    ("", "bad respacing spec"),
    ("1001", "cannot divide a section of 1000 steps into 1001"),
    ("400,600", "cannot divide a section of 500 steps into 600"),
    ("0", "cannot divide"),
    ("ddimabc", "needs an integer N"),
])
def test_space_timesteps_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


def test_create_diffusion_bad_arguments():
    with pytest.raises(ValueError, match="use_kl"):
        create_diffusion("", use_kl=True)
    with pytest.raises(ValueError, match="noise_schedule"):
        create_diffusion("", noise_schedule="nope")
    with pytest.raises(ValueError, match="bad respacing spec"):
        create_diffusion("abc")
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(np.array([0.1, 1.5]))


# ---------------------------------------------------------------------------------------------
# 3. Formulas against the float64 numpy statement
# ---------------------------------------------------------------------------------------------

def test_elementwise_helpers():
    rng = np.random.default_rng(7)
    m1, m2, lv1, lv2 = (rng.standard_normal(64) for _ in range(4))
    check("normal_kl", normal_kl(*(jnp.asarray(a, jnp.float32) for a in (m1, lv1, m2, lv2))),
          np_normal_kl(m1, lv1, m2, lv2))
    z = np.linspace(-4, 4, 81)
    check("approx cdf", approx_standard_normal_cdf(jnp.asarray(z, jnp.float32)), np_cdf(z))
    # The tanh approximation is close to the exact cdf (a sanity check of the statement itself).
    exact = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    assert np.max(np.abs(np_cdf(z) - exact)) < 1e-3
    x = np.concatenate([[-1.0, 1.0, -0.9995, 0.9995], rng.uniform(-0.99, 0.99, 28)])
    means = x + rng.standard_normal(32) * 0.01
    log_scales = np.full(32, np.log(0.01))
    ours = discretized_gaussian_log_likelihood(*(jnp.asarray(a, jnp.float32) for a in (x, means, log_scales)))
    check("discretized gaussian ll", ours, np_dgll(x, means, log_scales))
    # The edge bins are open: at x = +-1 the value differs from the central-bin formula.
    central = np.log(np_cdf((x - means + 1 / 255) / 0.01) - np_cdf((x - means - 1 / 255) / 0.01))
    assert np.all(np.asarray(ours)[:4] > central[:4] + 1e-3)
    # Far from the mean, the 1e-12 clamp caps the -log-likelihood at -log(1e-12).
    far = discretized_gaussian_log_likelihood(jnp.array([0.0]), jnp.array([0.9]), jnp.array([np.log(0.01)]))
    np.testing.assert_allclose(np.asarray(far), [np.log(1e-12)], rtol=1e-6)


@pytest.mark.parametrize("respacing", ["", "250"])
def test_q_sample_and_posterior(respacing):
    d, s = create_diffusion(respacing), np_schedule(respacing)
    x0, noise, x = data(1)
    t = np.array([0, 1, d.num_timesteps // 2, d.num_timesteps - 1])
    check(f"q_sample '{respacing}'", d.q_sample(x0, jnp.asarray(t), noise), np_q_sample(s, x0, t, noise))
    mean, var, log_var = d.q_posterior_mean_variance(x0, x, jnp.asarray(t))
    e_mean, e_var, e_log_var = np_q_posterior(s, x0, x, t)
    check(f"q_posterior mean '{respacing}'", mean, e_mean)
    assert np.asarray(var).shape[0] == B
    check(f"q_posterior variance '{respacing}'", np.broadcast_to(var, SHAPE), np.broadcast_to(e_var, SHAPE))
    check(f"q_posterior log variance '{respacing}'", np.broadcast_to(log_var, SHAPE),
          np.broadcast_to(e_log_var, SHAPE))


@pytest.mark.parametrize("respacing,learn_sigma,sigma_small", [
    ("", True, False), ("250", True, False), ("", False, False), ("", False, True), ("250", False, False)])
def test_p_mean_variance(respacing, learn_sigma, sigma_small):
    d = create_diffusion(respacing, learn_sigma=learn_sigma, sigma_small=sigma_small)
    var_type = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
    assert d.var_type == var_type
    s = np_schedule(respacing)
    _, _, x = data(2)
    t = np.array([0, 1, d.num_timesteps // 2, d.num_timesteps - 1])
    rng = np.random.default_rng(3)
    out = rng.standard_normal(SHAPE[:-1] + (2 * C if learn_sigma else C,)).astype(np.float32)
    if learn_sigma:
        out[..., C:] = rng.uniform(-1.5, 1.5, SHAPE)   # v is not clamped to [-1, 1]
    ours = d.p_mean_variance(jnp.asarray(out), jnp.asarray(x), jnp.asarray(t))
    exp = np_p_mean_variance(s, out, x, t, var_type)
    name = f"p_mean_variance {var_type} '{respacing}'"
    for k in ("mean", "variance", "log_variance", "pred_xstart"):
        check(f"{name} {k}", np.broadcast_to(ours[k], SHAPE), exp[k])
    if var_type == "fixed_small":   # variance 0 at t = 0 while its log is clipped to element 1
        assert np.all(np.asarray(ours["variance"])[0] == 0)
    if learn_sigma:
        with pytest.raises(ValueError, match="output channels"):
            d.p_mean_variance(jnp.asarray(out[..., :C]), jnp.asarray(x), jnp.asarray(t))


@pytest.mark.parametrize("respacing", ["", "250"])
def test_vb_terms_bpd(respacing):
    d, s = create_diffusion(respacing), np_schedule(respacing)
    x0, noise, _ = data(4)
    t = np.array([0, 0, 1, d.num_timesteps - 1])   # two decoder-NLL rows
    xt = np_q_sample(s, x0, t, noise).astype(np.float32)
    rng = np.random.default_rng(5)
    # eps close to the true noise (a plausible model) keeps the decoder NLL well inside float32's range.
    out = np.concatenate([noise + 0.3 * rng.standard_normal(SHAPE), rng.uniform(-1, 1, SHAPE)],
                         axis=-1).astype(np.float32)
    ours = np.asarray(d.vb_terms_bpd(jnp.asarray(out), jnp.asarray(x0), jnp.asarray(xt), jnp.asarray(t)))
    exp = np_vb_bpd(s, out, x0, xt, t)
    check_each(f"vb_terms_bpd '{respacing}'", ours, exp)
    assert np.all(exp > 0)
    # The t == 0 rows are the decoder NLL, the others the KL; both branches matter.
    p = np_p_mean_variance(s, out, xt, t)
    kl = np_mean_flat(np_normal_kl(*np_q_posterior(s, x0, xt, t)[::2], p["mean"], p["log_variance"])) / LN2
    assert np.all(np.abs(ours[:2] - kl[:2]) > 0.1 * np.abs(kl[:2]))


@pytest.mark.parametrize("respacing", ["", "250"])
def test_training_losses(respacing):
    d, s = create_diffusion(respacing), np_schedule(respacing)
    x0, noise, _ = data(6)
    t = np.array([0, 1, d.num_timesteps // 3, d.num_timesteps - 1])
    rng = np.random.default_rng(8)
    delta = (0.3 * rng.standard_normal(SHAPE)).astype(np.float32)
    seen = []

    def model_fn(xt, tm):   # eps = true noise + a fixed error, v from the model above
        seen.append(tm)
        return jnp.concatenate([jnp.asarray(noise + delta), jnp_model(xt, tm)[..., C:]], axis=-1)

    terms = d.training_losses(model_fn, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
    assert set(terms) == {"loss", "mse", "vb"}
    np.testing.assert_array_equal(np.asarray(seen[0]), s["timestep_map"][t])   # original timesteps

    xt = np_q_sample(s, x0, t, noise)
    out = np.concatenate([noise + delta, np_model(xt, s["timestep_map"][t])[..., C:]], axis=-1)
    mse = np_mean_flat((noise - out[..., :C]) ** 2)
    vb = np_vb_bpd(s, out, x0, xt, t)
    check_each(f"training mse '{respacing}'", terms["mse"], mse)
    check_each(f"training vb '{respacing}'", terms["vb"], vb)
    check_each(f"training loss '{respacing}'", terms["loss"], mse + vb)


def test_training_losses_fixed_variance_has_no_vb():
    d = create_diffusion("", learn_sigma=False)
    x0, noise, _ = data(9)
    t = jnp.array([0, 5, 500, 999])
    terms = d.training_losses(lambda xt, tm: jnp.zeros_like(xt), jnp.asarray(x0), t, jnp.asarray(noise))
    assert set(terms) == {"loss", "mse"}
    check_each("training mse, fixed variance", terms["loss"], np_mean_flat(np.asarray(noise, np.float64) ** 2))


# ---------------------------------------------------------------------------------------------
# 4. Stop-gradient of the vb term
# ---------------------------------------------------------------------------------------------

def test_vb_trains_only_the_variance():
    d = create_diffusion("")
    x0, noise, _ = data(10)
    t = jnp.array([0, 3, 400, 999])   # decoder NLL and KL rows
    rng = np.random.default_rng(11)
    eps0 = jnp.asarray(noise + 0.3 * rng.standard_normal(SHAPE), jnp.float32)
    v0 = jnp.asarray(rng.uniform(-1, 1, SHAPE), jnp.float32)

    def term(name, eps, v):
        fn = lambda xt, tm: jnp.concatenate([eps, v], axis=-1)
        return jnp.mean(d.training_losses(fn, jnp.asarray(x0), t, jnp.asarray(noise))[name])

    g_vb_eps, g_vb_v = jax.grad(lambda e, v: term("vb", e, v), argnums=(0, 1))(eps0, v0)
    g_mse_eps, g_mse_v = jax.grad(lambda e, v: term("mse", e, v), argnums=(0, 1))(eps0, v0)
    assert np.all(np.asarray(g_vb_eps) == 0)
    assert np.all(np.asarray(g_mse_v) == 0)
    assert np.all(np.isfinite(np.asarray(g_vb_v))) and np.count_nonzero(np.asarray(g_vb_v)) == g_vb_v.size
    np.testing.assert_allclose(np.asarray(g_mse_eps), 2 * (np.asarray(eps0) - noise) / np.prod(SHAPE), rtol=1e-5)
    # Without the stop-gradient the vb term does depend on eps: the gradient is a real choice.
    g_free = jax.grad(lambda e: jnp.mean(d.vb_terms_bpd(
        jnp.concatenate([e, v0], -1), jnp.asarray(x0), d.q_sample(jnp.asarray(x0), t, jnp.asarray(noise)), t)))(eps0)
    assert np.count_nonzero(np.asarray(g_free)) > 0


# ---------------------------------------------------------------------------------------------
# 5. Against the PyTorch statement of the reference
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


@pytest.mark.parametrize("respacing,kwargs", [
    ("", {}), ("250", {}), ("250", {"rescale_learned_sigmas": True}), ("", {"predict_xstart": True}),
    ("250", {"learn_sigma": False})])
def test_training_losses_match_reference(reference, respacing, kwargs):
    import torch
    _, ref_pkg = reference
    ref_d, d = ref_pkg.create_diffusion(respacing, **kwargs), create_diffusion(respacing, **kwargs)
    learn_sigma = kwargs.get("learn_sigma", True)
    x0, noise, _ = data(12)
    t = np.array([0, 1, d.num_timesteps // 2, d.num_timesteps - 1])
    seen = []
    base = torch_model_fn(seen)
    ref_model = base if learn_sigma else (lambda x, t, **k: base(x, t)[:, :C])
    our_model = jnp_model if learn_sigma else (lambda x, t: jnp_model(x, t)[..., :C])
    with torch.no_grad():
        ref = ref_d.training_losses(ref_model, nchw(x0), torch.from_numpy(t), model_kwargs={}, noise=nchw(noise))
    np.testing.assert_array_equal(seen[0].numpy(), d.timestep_map[t])
    ours = jax.jit(lambda: d.training_losses(our_model, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)))()
    assert set(ours) == set(ref) == ({"loss", "mse", "vb"} if learn_sigma else {"loss", "mse"})
    tag = f"'{respacing}' {','.join(kwargs) or 'default'}"
    for k in sorted(ref):
        check_each(f"vs reference: training {k} {tag}", ours[k], ref[k].numpy())


@pytest.mark.parametrize("learn_sigma,sigma_small", [(True, False), (False, False), (False, True)])
def test_sampling_steps_match_reference(reference, learn_sigma, sigma_small):
    import torch
    from dit_jax.parity.common import fixed_randn_like
    _, ref_pkg = reference
    kw = dict(learn_sigma=learn_sigma, sigma_small=sigma_small)
    ref_d, d = ref_pkg.create_diffusion("250", **kw), create_diffusion("250", **kw)
    _, noise, x = data(13)
    t = np.array([0, 1, 124, 249])
    seen = []
    base = torch_model_fn(seen)
    ref_model = base if learn_sigma else (lambda x, t, **k: base(x, t)[:, :C])
    our_model = jnp_model if learn_sigma else (lambda x, t: jnp_model(x, t)[..., :C])
    tag = f"{d.var_type}"
    with torch.no_grad():
        with fixed_randn_like(nchw(noise)):
            r = ref_d.p_sample(ref_model, nchw(x), torch.from_numpy(t), clip_denoised=False)
        np.testing.assert_array_equal(seen[-1].numpy(), d.timestep_map[t])
        sample, pred = p_sample(d, our_model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(noise),
                                clip_denoised=False)
        check(f"vs reference: p_sample {tag}", sample, nhwc(r["sample"]))
        check(f"vs reference: p_sample pred_xstart {tag}", pred, nhwc(r["pred_xstart"]))
        for eta in (0.0, 0.5):
            with fixed_randn_like(nchw(noise)):
                r = ref_d.ddim_sample(ref_model, nchw(x), torch.from_numpy(t), clip_denoised=False, eta=eta)
            sample, pred = ddim_sample(d, our_model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(noise), eta=eta,
                                       clip_denoised=False)
            check(f"vs reference: ddim_sample eta={eta} {tag}", sample, nhwc(r["sample"]))
            check(f"vs reference: ddim_sample pred_xstart eta={eta} {tag}", pred, nhwc(r["pred_xstart"]))
    # The noise really enters (except at t == 0): another noise moves rows 1.. and leaves row 0.
    other, _ = p_sample(d, our_model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(-noise))
    sample, _ = p_sample(d, our_model, jnp.asarray(x), jnp.asarray(t), jnp.asarray(noise))
    diff = np.abs(np.asarray(other) - np.asarray(sample)).reshape(B, -1).max(axis=1)
    assert diff[0] == 0 and np.all(diff[1:] > 1e-3)


# ---------------------------------------------------------------------------------------------
# 6. The sampling loop
# ---------------------------------------------------------------------------------------------

def test_sample_loop_deterministic_jitted_single_loop():
    d = create_diffusion("10")
    traces = []

    def model_fn(x, t):
        traces.append(1)
        return loop_model(x, t)

    run = jax.jit(lambda x, k: sample_loop(d, model_fn, x, k))
    _, _, x = data(14)
    a = np.asarray(run(jnp.asarray(x), jax.random.key(0)))
    b = np.asarray(run(jnp.asarray(x), jax.random.key(0)))
    c = np.asarray(run(jnp.asarray(x), jax.random.key(1)))
    assert np.all(np.isfinite(a)) and a.shape == SHAPE
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-2
    assert len(traces) == 1   # traced once: no Python loop over the steps
    jaxpr = jax.make_jaxpr(lambda x, k: sample_loop(d, model_fn, x, k))(jnp.asarray(x), jax.random.key(0))
    loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("while", "scan")]
    # fori_loop with a static trip count lowers to scan (a while loop with dynamic bounds).
    assert len(loops) == 1 and "sin" not in str([e.primitive.name for e in jaxpr.jaxpr.eqns])
    assert ("scan" in str(jaxpr)) or ("while" in str(jaxpr))
    with pytest.raises(ValueError, match="sampler"):
        sample_loop(d, model_fn, jnp.asarray(x), jax.random.key(0), sampler="euler")


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.5)])
def test_sample_loop_equals_step_by_step(sampler, eta):
    """The loop runs indices T-1 .. 0 with step i's noise normal(fold_in(key, i))."""
    d = create_diffusion("10")
    _, _, x = data(15)
    key = jax.random.key(3)
    ours = jax.jit(lambda x, k: sample_loop(d, loop_model, x, k, sampler=sampler, eta=eta))(jnp.asarray(x), key)
    y = jnp.asarray(x)
    for i in reversed(range(d.num_timesteps)):
        t = jnp.full((B,), i, jnp.int32)
        noise = jax.random.normal(jax.random.fold_in(key, i), y.shape, y.dtype)
        y, _ = (p_sample(d, loop_model, y, t, noise) if sampler == "ddpm"
                else ddim_sample(d, loop_model, y, t, noise, eta=eta))
    check(f"sample_loop {sampler} vs step by step", ours, y)


def test_sample_loop_model_sees_original_timesteps():
    d = create_diffusion("10")
    seen = []
    model_fn = lambda x, t: (jax.debug.callback(lambda tt: seen.append(np.asarray(tt)), t, ordered=True),
                             loop_model(x, t))[1]
    _, _, x = data(16)
    out = jax.jit(lambda x, k: sample_loop(d, model_fn, x, k))(jnp.asarray(x), jax.random.key(0))
    jax.block_until_ready(out)
    jax.effects_barrier()
    assert len(seen) == 10
    assert all(np.all(s == s[0]) and s.shape == (B,) for s in seen)
    assert [int(s[0]) for s in seen] == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def test_ddim_eta0_recovers_x0_with_exact_noise_model():
    """A model that predicts the exact noise of one known x0: deterministic DDIM lands on x0."""
    d = create_diffusion("10")
    x0, _, x = data(17)
    abar = jnp.asarray(np_schedule("")["abar_full"], jnp.float32)

    def model_fn(x, t):
        a = abar[t][:, None, None, None]
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        return jnp.concatenate([eps, jnp.zeros_like(eps)], axis=-1)

    got = jax.jit(lambda x, k: sample_loop(d, model_fn, x, k, sampler="ddim"))(jnp.asarray(x), jax.random.key(0))
    err = float(np.max(np.abs(np.asarray(got) - x0)))
    MEASURED["ddim eta=0 exact-noise model, max abs |x - x0|"] = err
    assert err < 1e-4
    assert float(np.max(np.abs(np.asarray(x) - x0))) > 1   # it really moved


# ---------------------------------------------------------------------------------------------
# 7. Classifier-free guidance
# ---------------------------------------------------------------------------------------------

def np_guidance(out, scale, channels):
    cond, uncond = np.split(np.asarray(out, np.float64), 2, axis=0)
    guided = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
    return np.concatenate([np.concatenate([guided, cond[..., channels:]], -1),
                           np.concatenate([guided, uncond[..., channels:]], -1)], 0)


def test_apply_guidance_reference_three_channels():
    rng = np.random.default_rng(20)
    out = rng.standard_normal((6, 4, 4, 8)).astype(np.float32)   # [cond; uncond], 4 eps + 4 variance channels
    ours = np.asarray(apply_guidance(jnp.asarray(out), 1.5, guidance_channels("reference", 4)))
    check("apply_guidance (3 channels)", ours, np_guidance(out, 1.5, 3))
    # The 4th eps channel and the variance channels stay as each half computed them.
    np.testing.assert_array_equal(ours[:3, ..., 3:], out[:3, ..., 3:])
    np.testing.assert_array_equal(ours[3:, ..., 3:], out[3:, ..., 3:])
    np.testing.assert_array_equal(ours[:3, ..., :3], ours[3:, ..., :3])
    assert np.max(np.abs(ours[:3, ..., :3] - out[:3, ..., :3])) > 0.1


def test_apply_guidance_all_mode():
    rng = np.random.default_rng(21)
    out = rng.standard_normal((4, 4, 4, 8)).astype(np.float32)
    assert guidance_channels("all", 4) == 4
    ours = np.asarray(apply_guidance(jnp.asarray(out), 1.375, guidance_channels("all", 4)))
    check("apply_guidance (all 4 channels)", ours, np_guidance(out, 1.375, 4))
    np.testing.assert_array_equal(ours[:2, ..., :4], ours[2:, ..., :4])
    np.testing.assert_array_equal(ours[:2, ..., 4:], out[:2, ..., 4:])
    # Scale 1 is the conditional output.
    np.testing.assert_allclose(np.asarray(apply_guidance(jnp.asarray(out), 1.0, 4))[:2], out[:2], rtol=0, atol=1e-6)


def test_guidance_channels():
    assert guidance_channels("reference", 4) == 3
    assert guidance_channels("all", 4) == 4
    assert guidance_channels("reference", 2) == 2
    for bad in ("none", "ALL", ""):
        with pytest.raises(ValueError, match="cfg mode"):
            guidance_channels(bad, 4)


def test_guided_model_fn():
    rng = np.random.default_rng(22)
    embed = rng.standard_normal((11, 8)).astype(np.float32)   # 10 classes + the null class 10
    calls = []

    def class_model_fn(x, t, y):
        calls.append((x.shape, np.asarray(t), np.asarray(y)))
        return jnp.concatenate([x, x], -1) * 0.5 + jnp.asarray(embed)[y][:, None, None, :] + 0.001 * t[:, None, None,
                                                                                                       None]

    x = rng.standard_normal((3, 4, 4, 4)).astype(np.float32)
    t = np.array([5, 500, 999], np.int32)
    labels = np.array([1, 7, 3], np.int32)
    fn = guided_model_fn(class_model_fn, jnp.asarray(labels), 10, 4.0, 3)
    ours = np.asarray(fn(jnp.asarray(x), jnp.asarray(t)))
    (shape, t2, y2), = calls
    assert shape == (6, 4, 4, 4)
    np.testing.assert_array_equal(t2, np.concatenate([t, t]))
    np.testing.assert_array_equal(y2, [1, 7, 3, 10, 10, 10])
    x2, tt = np.concatenate([x, x]).astype(np.float64), np.concatenate([t, t]).astype(np.float64)
    full = (np.concatenate([x2, x2], -1) * 0.5 + embed[np.concatenate([labels, [10, 10, 10]])][:, None, None, :]
            + 0.001 * tt[:, None, None, None])
    expected = np_guidance(full, 4.0, 3)[:3]
    assert ours.shape == (3, 4, 4, 8)
    check("guided_model_fn", ours, expected)
