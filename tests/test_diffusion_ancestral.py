"""The ancestral samplers (dit_jax.diffusion.ancestral): one DDPM / DDIM step against the PyTorch
statement of the reference, the jit-compiled sampling loop and classifier-free guidance.

Our arrays are channels-last (NHWC); the reference's are NCHW. Relative errors are
max|ours - expected| / max|expected| over an array unless stated otherwise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion.gaussian import create_diffusion
from dit_jax.diffusion.ancestral import (apply_guidance, ddim_sample, guidance_channels, guided_model_fn, p_sample,
                                        sample_loop)
from diffusion_helpers import (B, C, MEASURED, SHAPE, check, data, jnp_model, loop_model, nchw, nhwc, np_schedule,
                               report_measured, torch_model_fn)


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    report_measured()   # this file's largest errors, shown with `pytest -s`


# ---------------------------------------------------------------------------------------------
# 1. One step against the PyTorch statement of the reference
# ---------------------------------------------------------------------------------------------


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
# 2. The sampling loop
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
# 3. Classifier-free guidance
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
