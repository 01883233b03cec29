"""SiT's interpolation paths (dit_jax.transport.paths) against the PyTorch statement of the official
transport package: every path function, alpha and sigma against float64 with their derivatives, and
the two diffusion forms the official code cannot run against a float64 statement.

Both sides evaluate the same fixed network, a small random channel map and tanh of (x, t), on
B=2 latents of 4x4x4 (ours channels-last, the reference's NCHW): tests/transport_helpers.py. Relative
errors are max|ours - reference| / max|reference|; each family has a negative control.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.transport import PATHS, Transport
from transport_helpers import (B, SHAPE, T_INTERIOR, check, data, fails, from_torch, ref_transport, to_torch)
from transport_helpers import report_each_file, sit  # noqa: F401 - the files' fixtures

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")



# ---------------------------------------------------------------------------------------------
# Paths: every function against the reference; the two forms it cannot run against float64.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
def test_path_functions_match_reference(sit, path):
    ours, ref = Transport(path).path_sampler, ref_transport(sit, Transport(path)).path_sampler
    x, v = data(1), data(2)
    t = jnp.asarray(T_INTERIOR)
    tt, xt, vt = torch.from_numpy(T_INTERIOR), to_torch(x), to_torch(v)
    for i, name in enumerate(("alpha_t", "d_alpha_t")):
        check(f"{path} {name}", np.broadcast_to(ours.compute_alpha_t(t)[i], (B,)),
              torch.as_tensor(ref.compute_alpha_t(tt)[i]).expand(B).numpy())
    for i, name in enumerate(("sigma_t", "d_sigma_t")):
        check(f"{path} {name}", np.broadcast_to(ours.compute_sigma_t(t)[i], (B,)),
              torch.as_tensor(ref.compute_sigma_t(tt)[i]).expand(B).numpy())
    for i, name in enumerate(("drift mean", "drift var")):
        got = np.broadcast_to(ours.compute_drift(x, t)[i], SHAPE)
        want = ref.compute_drift(xt, tt)[i]
        check(f"{path} {name}", got, from_torch(want.expand(xt.shape)))
    for form in ("SBDM", "sigma", "linear", "decreasing"):
        got = np.broadcast_to(ours.compute_diffusion(x, t, form, 0.7), SHAPE)
        check(f"{path} diffusion {form}", got, from_torch(ref.compute_diffusion(xt, tt, form, 0.7).expand(xt.shape)))
    check(f"{path} score from velocity", ours.get_score_from_velocity(v, x, t),
          from_torch(ref.get_score_from_velocity(vt, xt, tt)))
    check(f"{path} noise from velocity", ours.get_noise_from_velocity(v, x, t),
          from_torch(ref.get_noise_from_velocity(vt, xt, tt)))
    check(f"{path} velocity from score", ours.get_velocity_from_score(v, x, t),
          from_torch(ref.get_velocity_from_score(vt, xt, tt)))


def np_alpha_sigma(path, t):
    """float64 statement of (alpha_t, sigma_t), written from the paper's definitions."""
    if path == "Linear":
        return t, 1 - t
    if path == "GVP":
        return np.sin(np.pi * t / 2), np.cos(np.pi * t / 2)
    log_alpha = -0.25 * (1 - t) ** 2 * (20.0 - 0.1) - 0.5 * (1 - t) * 0.1
    return np.exp(log_alpha), np.sqrt(1 - np.exp(2 * log_alpha))


@pytest.mark.parametrize("path", PATHS)
def test_path_coefficients_float64(path):
    """alpha, sigma against float64; the derivatives against central differences of the float64 ones."""
    p = Transport(path).path_sampler
    t64 = np.linspace(0.05, 0.95, 19)
    t = jnp.asarray(t64, jnp.float32)
    a, s = np_alpha_sigma(path, t64)
    h = 1e-6
    da = (np_alpha_sigma(path, t64 + h)[0] - np_alpha_sigma(path, t64 - h)[0]) / (2 * h)
    ds = (np_alpha_sigma(path, t64 + h)[1] - np_alpha_sigma(path, t64 - h)[1]) / (2 * h)
    check(f"{path} alpha_t vs float64", p.compute_alpha_t(t)[0], a, tol=2e-6)
    check(f"{path} sigma_t vs float64", p.compute_sigma_t(t)[0], s, tol=2e-6)
    check(f"{path} d_alpha_t vs central difference", np.broadcast_to(p.compute_alpha_t(t)[1], t.shape), da, tol=1e-5)
    check(f"{path} d_sigma_t vs central difference", np.broadcast_to(p.compute_sigma_t(t)[1], t.shape), ds, tol=1e-5)
    # Negative control: alpha and sigma swapped.
    assert fails(p.compute_sigma_t(t)[0], a)


def np_intended_diffusion(form, t, norm):
    if form == "constant":
        return np.full_like(t, norm)
    return norm * np.sin(np.pi * t) ** 2      # "increasing-decreasing"


@pytest.mark.parametrize("form", ["constant", "increasing-decreasing"])
def test_forms_the_official_code_cannot_run(sit, form):
    """Ours gives the intended formula (float64 statement); the reference raises for one and returns a
    Python float for the other, whose square root its SDE steps cannot take."""
    t64 = np.linspace(0.0, 1.0, 11)
    x = jnp.zeros((11, 2, 2, 1), jnp.float32)
    for path in PATHS:
        got = np.asarray(Transport(path).path_sampler.compute_diffusion(x, jnp.asarray(t64, jnp.float32), form, 0.8))
        check(f"{form} diffusion vs float64", np.broadcast_to(got, x.shape)[:, 0, 0, 0],
              np_intended_diffusion(form, t64, 0.8), tol=2e-6)
    if form == "increasing-decreasing":
        assert fails(np.broadcast_to(got, x.shape)[:, 0, 0, 0] + 0.0, 0.8 * np.sin(np.pi * t64), tol=1e-6)
    plan = ref_transport(sit, Transport()).path_sampler
    tt, xt = torch.from_numpy(t64.astype(np.float32)), torch.zeros(11, 1, 2, 2)
    if form == "increasing-decreasing":
        with pytest.raises(NotImplementedError):
            plan.compute_diffusion(xt, tt, form, 0.8)
    else:
        with pytest.raises(TypeError):
            torch.sqrt(2 * plan.compute_diffusion(xt, tt, form, 0.8))
