"""The t = 0 decoder term against PyTorch, and an API with the reference's defaults.

PyTorch runs on CPU here (float32 tanh from MKL). Its t = 0 term is matched by a tanh that is
correctly rounded where it approaches +-1 (XLA's is exactly 1.0 from 7.999 on, PyTorch's from
9.01 on); what is left comes from MKL's own rounding (faithful, not correct) and is bounded below.
"""

import numpy as np

import jax
import jax.numpy as jnp

from dit_jax.diffusion.gaussian import create_diffusion, discretized_gaussian_log_likelihood, rounded_tanh
from dit_jax.diffusion.ancestral import ddim_sample, forward_with_cfg, guided_model_fn, p_sample


def _grid(lo, hi, step=1):
    bits = np.arange(np.float32(lo).view(np.int32), np.float32(hi).view(np.int32), step, dtype=np.int32)
    return bits.view(np.float32)


def test_rounded_tanh_saturates_where_a_correctly_rounded_tanh_does():
    x = _grid(0.55, 10.0, 37)   # every 37th float32 in [0.55, 10): about 940k values
    ours = np.asarray(jax.jit(rounded_tanh)(x))
    exact = np.tanh(x.astype(np.float64)).astype(np.float32)
    assert np.all(np.abs(ours.astype(np.float64) - exact) <= 2.0**-24)          # within 1 ulp
    assert np.mean((ours != exact)[x >= 4]) < 1e-3 and np.mean((ours != exact)[x >= 6]) < 1e-5
    np.testing.assert_array_equal(np.asarray(jax.jit(rounded_tanh)(-x)), -ours)
    assert float(rounded_tanh(jnp.float32(8.5))) < 1.0 and float(rounded_tanh(jnp.float32(9.02))) == 1.0
    small = _grid(1e-6, 0.55, 997)
    np.testing.assert_allclose(np.asarray(rounded_tanh(small)), np.tanh(small.astype(np.float64)), rtol=3e-7)
    # PyTorch's gradient 1 - tanh^2: finite far into the tails.
    g = jax.vmap(jax.grad(rounded_tanh))(jnp.array([0.1, 3.0, 50.0, -100.0], jnp.float32))
    np.testing.assert_allclose(np.asarray(g), 1 - np.tanh([0.1, 3.0, 50.0, -100.0]) ** 2, rtol=1e-5, atol=1e-12)


def _decoder_inputs(n, d, seed=0):
    """Pixels from the central bins and the open edge bins, 0 to 15 std from the mean, at t = 0 scales."""
    rng = np.random.default_rng(seed)
    log_scales = rng.uniform(-5.5, -4.0, (n, d)).astype(np.float32)   # std 0.004 .. 0.018, as at t = 0
    z = rng.uniform(-15, 15, (n, d))
    means = rng.uniform(-1.2, 1.2, (n, d)).astype(np.float32)
    x = (means + z * np.exp(log_scales)).astype(np.float32)
    x[:, :d // 8] = rng.choice([-1.0, 1.0], (n, d // 8))
    return x, means, log_scales, (x - means) * np.exp(-log_scales.astype(np.float64))


def test_t0_decoder_term_against_reference(reference):   # the fixture puts the statement on sys.path
    import torch
    from diffusion import diffusion_utils as du

    n, d = 64, 1024   # 64 examples of 1024 pixels (16x16x4 latents)
    x, means, log_scales, z = _decoder_inputs(n, d)
    ours = np.asarray(jax.jit(discretized_gaussian_log_likelihood)(x, means, log_scales), np.float64)
    ref = du.discretized_gaussian_log_likelihood(torch.from_numpy(x), means=torch.from_numpy(means),
                                                 log_scales=torch.from_numpy(log_scales)).numpy().astype(np.float64)
    # Pixels within 3 std: the CDFs are not near 0 or 1, float32 rounding only.
    near = np.abs(z) < 3
    assert np.all((np.abs(ours - ref) <= 1e-5 * np.abs(ref) + 1e-6)[near])
    # Per example (the term is a mean over pixels), every pixel anywhere. MKL's rounding can still
    # flip a CDF difference of 1 ulp to 0 (clamped to 1e-12), 11 nats on one pixel: on 4M pixels
    # that left up to 6e-4 per 1024-pixel example (docs/parity.md); none happens on these.
    per_ex = np.abs(ours.mean(1) - ref.mean(1)) / np.abs(ref.mean(1))
    print(f"\nt = 0 decoder term, {n} examples x {d} pixels up to 15 std out: max rel {per_ex.max():.2e}")
    assert per_ex.max() < 1e-5
    # Elementwise, differences past 1e-5 are left only where the reference's two CDFs are within
    # a few thousand ulps of 1 (or 0).
    bad = np.abs(ours - ref) > 1e-5 * np.abs(ref) + 1e-6
    assert np.mean(bad) < 1e-3 and np.all((np.abs(z[bad]) > 3) & (np.abs(z[bad]) < 12))


def test_t0_decoder_term_with_xla_tanh_is_far_off(reference, monkeypatch):
    """XLA's own tanh (the old formulation) misses the same comparison by orders of magnitude."""
    import torch
    import dit_jax.diffusion.gaussian as gaussian
    from diffusion import diffusion_utils as du
    monkeypatch.setattr(gaussian, "rounded_tanh", jnp.tanh)
    x, means, log_scales, _ = _decoder_inputs(64, 1024)
    fresh = jax.jit(lambda *a: gaussian.discretized_gaussian_log_likelihood(*a))   # not the cached trace
    ours = np.asarray(fresh(x, means, log_scales), np.float64)
    ref = du.discretized_gaussian_log_likelihood(torch.from_numpy(x), means=torch.from_numpy(means),
                                                 log_scales=torch.from_numpy(log_scales)).numpy()
    assert np.max(np.abs(ours.mean(1) - ref.mean(1)) / np.abs(ref.mean(1))) > 5e-3


# -- the API ------------------------------------------------------------------------------------

def _model(seen=None):
    """A model whose pred_xstart leaves [-1, 1] (so clipping matters); records its timesteps."""
    w = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32) * 2

    def fn(x, t):
        if seen is not None:
            seen.append(t)
        tv = jnp.sin(t.astype(jnp.float32))[:, None, None, None] * 0.3
        return jnp.einsum("nhwc,co->nhwo", x, w) + tv
    return fn, w


def test_steps_clip_and_map_timesteps_like_the_reference(reference):
    import torch
    from dit_jax.parity.common import fixed_randn_like, nchw, nhwc
    _, ref_pkg = reference
    d, ref_d = create_diffusion("250"), ref_pkg.create_diffusion("250")
    seen, ref_seen = [], []
    fn, w = _model(seen)

    def ref_fn(x, t, **kw):
        ref_seen.append(t.clone())
        tv = torch.sin(t.to(torch.float32))[:, None, None, None] * 0.3
        return torch.einsum("nchw,co->nohw", x, torch.from_numpy(w)) + tv

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4, 4, 4, 2)) * 3).astype(np.float32)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    t = np.array([0, 1, 124, 249])
    with torch.no_grad(), fixed_randn_like(nchw(noise)):
        r = ref_d.p_sample(ref_fn, nchw(x), torch.from_numpy(t))          # reference default: clip
        r_ddim = ref_d.ddim_sample(ref_fn, nchw(x), torch.from_numpy(t))
    sample, pred = p_sample(d, fn, jnp.asarray(x), jnp.asarray(t), jnp.asarray(noise))
    ddim, _ = ddim_sample(d, fn, jnp.asarray(x), jnp.asarray(t), jnp.asarray(noise))
    assert np.max(np.abs(np.asarray(pred))) == 1.0                       # clipped, as the reference
    np.testing.assert_allclose(np.asarray(sample), nhwc(r["sample"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ddim), nhwc(r_ddim["sample"]), rtol=1e-5, atol=1e-6)
    # The model saw the original timesteps on both sides, without the caller mapping anything.
    np.testing.assert_array_equal(np.asarray(seen[0]), d.timestep_map[t])
    np.testing.assert_array_equal(ref_seen[0].numpy(), d.timestep_map[t])
    unclipped, _ = p_sample(d, fn, jnp.asarray(x), jnp.asarray(t), jnp.asarray(noise), clip_denoised=False)
    assert np.max(np.abs(np.asarray(unclipped) - np.asarray(sample))) > 1e-3


def test_from_torch_copies(reference):
    import torch
    from dit_jax.convert.dit_torch import from_torch
    from dit_jax.models.dit import dit_config
    from dit_jax.parity.common import torch_model
    models, _ = reference
    cfg = dit_config("DiT-S/4", input_size=8, depth=1, num_classes=5, hidden_size=32, num_heads=2)
    m = torch_model(models, cfg)
    params, _ = from_torch(m.state_dict(), cfg)
    before = np.array(params["final_linear"]["bias"])
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    np.testing.assert_array_equal(np.asarray(params["final_linear"]["bias"]), before)


def test_forward_with_cfg_is_the_reference_layout(reference):
    import torch
    from dit_jax.convert.dit_torch import from_torch
    from dit_jax.models.dit import DiT, dit_config
    from dit_jax.parity.common import nchw, nhwc, randomize_zero_layers, torch_model
    models, _ = reference
    cfg = dit_config("DiT-S/4", input_size=8, depth=1, num_classes=5, hidden_size=32, num_heads=2)
    torch.manual_seed(0)
    m = torch_model(models, cfg).eval()
    randomize_zero_layers(m)
    params, _ = from_torch(m.state_dict(), cfg)
    apply = lambda x, t, y: DiT(cfg).apply({"params": params}, x, t, y)  # noqa: E731
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
    x2 = np.concatenate([x, rng.standard_normal(x.shape).astype(np.float32)])  # 2nd half ignored, as the reference
    t2, y = np.array([3, 500, 999] * 2), np.array([1, 2, 4])
    y2 = np.concatenate([y, [5, 5, 5]])
    ours = np.asarray(forward_with_cfg(apply, 4.0)(jnp.asarray(x2), jnp.asarray(t2), jnp.asarray(y2)))
    with torch.no_grad():
        ref = nhwc(m.forward_with_cfg(nchw(x2), torch.from_numpy(t2), torch.from_numpy(y2), 4.0))
    assert ours.shape == ref.shape == (6, 8, 8, 8)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # guided_model_fn returns the conditional half of that layout.
    half = guided_model_fn(apply, jnp.asarray(y), 5, 4.0, 3)(jnp.asarray(x), jnp.asarray(t2[:3]))
    np.testing.assert_allclose(np.asarray(half), ours[:3], rtol=1e-6, atol=1e-6)
