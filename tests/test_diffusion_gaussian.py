"""The Gaussian diffusion (dit_jax.diffusion.gaussian): schedule constants, every formula against a
float64 numpy statement (tests/diffusion_helpers.py), the stop-gradient of the vb term, and the training
losses against the PyTorch statement of the reference.

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
from diffusion_helpers import (B, C, LN2, SHAPE, check, check_each, data, jnp_model, nchw, np_cdf, np_dgll,
                               np_mean_flat, np_model, np_normal_kl, np_p_mean_variance, np_q_posterior, np_q_sample,
                               np_schedule, np_vb_bpd, report_measured, torch_model_fn)


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    report_measured()   # this file's largest errors, shown with `pytest -s`


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
# 2. Formulas against the float64 numpy statement
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
# 3. Stop-gradient of the vb term
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
# 4. The training losses against the PyTorch statement of the reference
# ---------------------------------------------------------------------------------------------

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
