"""SiT's flow-matching objective (dit_jax.transport) against the PyTorch statement of the official
transport package (tests/sit_reference; set SIT_REFERENCE=/path/to/SiT to use a real checkout).

Both sides evaluate the same fixed network, a small random channel map and tanh of (x, t), on
B=2 latents of 4x4x4 (ours channels-last, the reference's NCHW). Checked: every path function, the
time intervals and eps defaults, the training loss for every path x prediction x loss weight with
the same x0, x1 and t, one ODE step (euler, heun), one SDE step (euler, heun) with identical noise
per diffusion form, each last step, short whole fixed-step solves, a whole dopri5 solve against
torchdiffeq within the solver tolerance, the two diffusion forms the official code cannot run
against a float64 statement, guidance, and the network-evaluation counts. Relative errors are
max|ours - reference| / max|reference|; each family has a negative control.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion.ancestral import guidance_channels
from dit_jax.parity.sit import _load_module, intended_compute_diffusion
from dit_jax.transport import (DIFFUSION_FORMS, LAST_STEPS, LOSS_WEIGHTS, PATHS, PREDICTIONS, Transport,
                               forward_with_cfg, guided_model_fn, model_evaluations, sample_ode, sample_sde,
                               split_learned_sigma, training_losses, velocity_fn)
from dit_jax.transport.integrators import (ode_euler_step, ode_heun_step, sde_euler_step, sde_heun_step, sde_interval,
                                        sde_last_step, time_grid)
from dit_jax.transport.transport import sample_time_and_noise

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

SHAPE = (2, 4, 4, 4)      # (B, H, W, C), channels last
B, C = SHAPE[0], SHAPE[-1]
TOL = 1e-5                # relative, float32 against float32 (torch) or float64 (numpy)
SIT_DIR = os.environ.get("SIT_REFERENCE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "sit_reference")

# Largest relative errors seen, by name (printed with `pytest -s`).
MEASURED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    if MEASURED:
        print("\nlargest relative errors measured:")
        for name in sorted(MEASURED):
            print(f"  {name:<62} {MEASURED[name]:.2e}")


def rel_err(ours, expected) -> float:
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(expected)), "non-finite values"
    return float(np.max(np.abs(ours - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def check(name, ours, expected, tol=TOL):
    err = rel_err(ours, expected)
    MEASURED[name] = max(err, MEASURED.get(name, 0.0))
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"


def fails(ours, expected, tol=TOL) -> bool:
    """Negative controls: the perturbed computation must miss the tolerance clearly (10x)."""
    return rel_err(ours, expected) > 10 * tol


# ---------------------------------------------------------------------------------------------
# The reference package, the shared network and layout helpers.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sit():
    """The reference's transport package and models module, loaded under private names (tests/
    torch_reference also has a top-level `models`)."""
    package = os.path.join(SIT_DIR, "transport")
    transport = _load_module("sit_reference_transport", os.path.join(package, "__init__.py"), package)
    models = _load_module("sit_reference_models", os.path.join(SIT_DIR, "models.py")) if SIT_DIR.endswith(
        "sit_reference") else None
    return transport, models


RNG = np.random.default_rng(20)
W = (RNG.normal(size=(C, C)) * 0.6).astype(np.float32)
U = RNG.normal(size=(C,)).astype(np.float32)
BIAS = (RNG.normal(size=(C,)) * 0.1).astype(np.float32)
NUM_CLASSES = 3
W2 = (RNG.normal(size=(C, 2 * C)) * 0.6).astype(np.float32)
U2 = RNG.normal(size=(2 * C,)).astype(np.float32)
EMB = RNG.normal(size=(NUM_CLASSES + 1, 2 * C)).astype(np.float32)


def jax_model(x, t):
    return jnp.tanh(x @ W + t.reshape(-1, 1, 1, 1) * U + BIAS)


def torch_model(x, t):
    """The same network on NCHW tensors."""
    h = x.permute(0, 2, 3, 1) @ torch.from_numpy(W) + t.reshape(-1, 1, 1, 1) * torch.from_numpy(U) \
        + torch.from_numpy(BIAS)
    return torch.tanh(h).permute(0, 3, 1, 2)


def jax_class_model(x, t, y):
    """A class-conditional network with 2C output channels (a learned-sigma half)."""
    return jnp.tanh(x @ W2 + t.reshape(-1, 1, 1, 1) * U2 + EMB[y][:, None, None, :])


def torch_class_model(x, t, y):
    h = x.permute(0, 2, 3, 1) @ torch.from_numpy(W2) + t.reshape(-1, 1, 1, 1) * torch.from_numpy(U2) \
        + torch.from_numpy(EMB)[y][:, None, None, :]
    return torch.tanh(h).permute(0, 3, 1, 2)


def to_torch(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x, np.float32), (0, 3, 1, 2))))


def from_torch(x):
    return np.transpose(x.detach().numpy(), (0, 2, 3, 1))


def data(seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32) * scale)


def ref_transport(sit, transport: Transport):
    return sit[0].create_transport(transport.path, transport.prediction, transport.loss_weight,
                                   transport.train_eps, transport.sample_eps)


COMBOS = [(p, q) for p in PATHS for q in PREDICTIONS]
T_INTERIOR = np.array([0.13, 0.71], np.float32)


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


# ---------------------------------------------------------------------------------------------
# Transport configuration: time intervals and eps defaults.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,prediction", COMBOS)
def test_time_interval_matches_check_interval(sit, path, prediction):
    for train_eps, sample_eps in ((None, None), (2e-3, 5e-3)):
        ours = Transport(path, prediction, train_eps=train_eps, sample_eps=sample_eps)
        ref = ref_transport(sit, ours)
        assert ours.eps(True) == ref.train_eps and ours.eps(False) == ref.sample_eps
        assert ours.time_interval(True) == pytest.approx(ref.check_interval(ref.train_eps, ref.sample_eps))
        for form in ("SBDM", "sigma"):
            for size in (0.0, 0.04):
                for reverse in (False, True):
                    for sde in (False, True):
                        kw = dict(sde=sde, diffusion_form=form, last_step_size=size, reverse=reverse)
                        assert ours.time_interval(False, **kw) == pytest.approx(
                            ref.check_interval(ref.train_eps, ref.sample_eps, eval=True, **kw)), kw


def test_transport_rejects_bad_choices():
    for kwargs, word in ((dict(path="linear"), "'linear'"), (dict(prediction="eps"), "'eps'"),
                         (dict(loss_weight="none"), "'none'"), (dict(train_eps=0.7), "0.7")):
        with pytest.raises(ValueError, match=word):
            Transport(**kwargs)
    with pytest.raises(ValueError, match="Linear"):
        Transport(path="bad")
    with pytest.raises(ValueError, match="'Midpoint'"):
        sample_ode(Transport(), jax_model, data(), method="Midpoint")
    with pytest.raises(ValueError, match="'quadratic'"):
        sample_sde(Transport(), jax_model, data(), jax.random.key(0), diffusion_form="quadratic")
    with pytest.raises(ValueError, match="'mean'"):
        sample_sde(Transport(), jax_model, data(), jax.random.key(0), last_step="mean")
    with pytest.raises(ValueError, match="channels"):
        split_learned_sigma(jnp.zeros((1, 2, 2, 6)), 4)


# ---------------------------------------------------------------------------------------------
# Training loss.
# ---------------------------------------------------------------------------------------------

def reference_loss(sit, transport, x1, seed):
    """The reference's loss on its own draw, and that draw (x0 first, then t: its order)."""
    ref = ref_transport(sit, transport)
    x1t = to_torch(x1)
    torch.manual_seed(seed)
    x0 = torch.randn_like(x1t)
    t0, t1 = ref.check_interval(ref.train_eps, ref.sample_eps)
    t = torch.rand((B,)) * (t1 - t0) + t0
    torch.manual_seed(seed)
    terms = ref.training_losses(torch_model, x1t)
    return terms, jnp.asarray(t.numpy()), jnp.asarray(from_torch(x0))


@pytest.mark.parametrize("loss_weight", LOSS_WEIGHTS)
@pytest.mark.parametrize("path,prediction", COMBOS)
def test_training_loss_matches_reference(sit, path, prediction, loss_weight):
    transport = Transport(path, prediction, loss_weight)
    x1 = data(3)
    terms, t, x0 = reference_loss(sit, transport, x1, seed=7)
    ours = training_losses(transport, jax_model, x1, t=t, x0=x0)
    name = f"loss {path}/{prediction}/{loss_weight}"
    check(name, ours["loss"], terms["loss"].numpy())
    check(name + " pred", ours["pred"], from_torch(terms["pred"]))
    if prediction != "velocity" and loss_weight is not None:
        # Negative control: the same loss on a path with alpha and sigma swapped.
        plan = type(transport.path_sampler)

        class Swapped(plan):
            def compute_alpha_t(self, t):
                return plan.compute_sigma_t(self, t)

            def compute_sigma_t(self, t):
                return plan.compute_alpha_t(self, t)

        class SwappedTransport(Transport):
            @property
            def path_sampler(self):
                return Swapped()
        wrong = SwappedTransport(path, prediction, loss_weight)
        assert fails(training_losses(wrong, jax_model, x1, t=t, x0=x0)["loss"], terms["loss"].numpy())


def test_training_loss_runs_in_float32_for_bfloat16_data():
    """bfloat16 latents: t, x0 and the loss stay float32, and the loss equals the float32 data's loss."""
    transport, x1 = Transport("GVP", "noise", "velocity"), data(4)
    t, x0 = jnp.asarray([0.3141, 0.9001]), data(5)
    low = training_losses(transport, jax_model, x1.astype(jnp.bfloat16), t=t, x0=x0)
    high = training_losses(transport, jax_model, x1.astype(jnp.bfloat16).astype(jnp.float32), t=t, x0=x0)
    assert low["loss"].dtype == low["t"].dtype == jnp.float32
    np.testing.assert_array_equal(low["loss"], high["loss"])
    assert hash(Transport("GVP")) == hash(Transport("GVP")) != hash(Transport("VP"))   # usable as a static argument


def test_training_loss_draw_is_reproducible():
    """A loss from a key equals the loss from that key's (t, x0) given explicitly; t lies in [t0, t1]."""
    transport = Transport("VP", "noise", "likelihood")
    x1, key = data(4), jax.random.key(11)
    drawn = training_losses(transport, jax_model, x1, key)
    t, x0 = sample_time_and_noise(transport, key, x1)
    again = training_losses(transport, jax_model, x1, t=t, x0=x0)
    np.testing.assert_array_equal(drawn["loss"], again["loss"])
    t0, t1 = transport.time_interval(True)
    ts = sample_time_and_noise(transport, key, jnp.zeros((1024, 1)))[0]
    assert float(ts.min()) >= t0 and float(ts.max()) <= t1 and float(ts.max()) > t1 - 0.01
    other = training_losses(transport, jax_model, x1, jax.random.key(12))["loss"]
    assert not np.allclose(other, drawn["loss"])
    with pytest.raises(ValueError, match="key"):
        training_losses(transport, jax_model, x1)


# ---------------------------------------------------------------------------------------------
# ODE: one step, short whole solves, dopri5 against torchdiffeq.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("path,prediction", COMBOS)
def test_ode_step_matches_reference(sit, path, prediction, method):
    transport = Transport(path, prediction)
    ref = ref_transport(sit, transport)
    x = data(5)
    field = velocity_fn(transport, jax_model)
    step = ode_euler_step if method == "euler" else ode_heun_step
    grid = time_grid(0.3, 0.34, 2)
    for t0, t1 in ((grid[0], grid[1]), (grid[1], grid[0])):     # forward and reverse
        solver = sit[0].integrators.ode(ref.get_drift(), t0=float(t0), t1=float(t1),
                                        sampler_type="euler" if method == "euler" else "heun2",
                                        num_steps=2, atol=1e-6, rtol=1e-3)
        want = from_torch(solver.sample(to_torch(x), torch_model)[-1])
        ours = step(field, x, jnp.float32(t0), jnp.float32(t1))
        check(f"ode {method} step {path}/{prediction}", ours, want)
        # Negative control: the step evaluated one grid point off (at t1 instead of t0).
        off = step(field, x, jnp.float32(t1), jnp.float32(t1) + (jnp.float32(t1) - jnp.float32(t0)))
        assert fails(off - x, want - np.asarray(x), tol=1e-3)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("path,prediction", [("Linear", "velocity"), ("GVP", "score"), ("VP", "noise")])
def test_fixed_step_ode_solve_matches_reference(sit, path, prediction, method):
    """Whole solves of 6 grid points (5 intervals), forward and reverse, as torchdiffeq integrates SiT's grid.
    (VP reversed starts at t = 1, where sigma_t = 0 and a noise prediction has no score, in SiT as here.)"""
    transport = Transport(path, prediction)
    sampler = sit[0].Sampler(ref_transport(sit, transport))
    x = data(6)
    for reverse in ((False,) if path == "VP" else (False, True)):
        want = from_torch(sampler.sample_ode(sampling_method="euler" if method == "euler" else "heun2", num_steps=6,
                                             reverse=reverse)(to_torch(x), torch_model)[-1])
        solve = functools.partial(sample_ode, transport, jax_model, method=method, reverse=reverse)
        if path == "Linear" and not reverse:
            ours = jax.jit(functools.partial(solve, num_steps=6))(x)
        else:
            with jax.disable_jit():    # the loop runs in Python: no compilation, same arithmetic
                ours = solve(x, num_steps=6)
        check(f"ode {method} 6-point solve {path}/{prediction}", ours, want)
        # Negative control: num_steps intervals instead of num_steps - 1.
        with jax.disable_jit():
            wrong = solve(x, num_steps=7)
        assert fails(wrong, want)


def dopri5_reference(sit, transport, x, *, atol=1e-6, rtol=1e-3, reverse=False, dtype=torch.float32, gain=1.0):
    """The reference's dopri5 solution at t1 (torchdiffeq) and its count of network evaluations."""
    sampler = sit[0].Sampler(ref_transport(sit, transport))
    calls = [0]

    def counted(xx, tt):
        calls[0] += 1
        return gain * torch_model(xx.to(torch.float32), tt.to(torch.float32)).to(dtype)
    fn = sampler.sample_ode(sampling_method="dopri5", num_steps=2, atol=atol, rtol=rtol, reverse=reverse)
    return from_torch(fn(to_torch(x).to(dtype), counted)[-1].to(torch.float32)), calls[0]


DOPRI5_CASES = [("Linear", "velocity", False), ("Linear", "velocity", True), ("VP", "score", False)]


@pytest.fixture(scope="module")
def dopri5_runs(sit):
    """Per case: ours (jitted) with its reported and its counted NFE, torchdiffeq's with its NFE, and an
    rtol 1e-9 float64 torchdiffeq solution."""
    runs = {}
    count = [0]

    def counted(x, t):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return jax_model(x, t)
    for path, prediction, reverse in DOPRI5_CASES:
        transport = Transport(path, prediction)
        x = data(8)
        count[0] = 0
        ours, nfe = jax.jit(functools.partial(sample_ode, transport, counted, method="dopri5", reverse=reverse,
                                              return_nfe=True))(x)
        jax.block_until_ready(ours)
        jax.effects_barrier()
        ref, ref_nfe = dopri5_reference(sit, transport, x, reverse=reverse)
        exact, _ = dopri5_reference(sit, transport, x, atol=1e-12, rtol=1e-9, reverse=reverse, dtype=torch.float64)
        runs[(path, reverse)] = dict(transport=transport, x=x, ours=np.asarray(ours), nfe=int(nfe), counted=count[0],
                                     ref=ref, ref_nfe=ref_nfe, exact=exact)
    return runs


@pytest.mark.parametrize("path,prediction,reverse", DOPRI5_CASES)
def test_dopri5_matches_torchdiffeq_within_tolerance(sit, dopri5_runs, path, prediction, reverse):
    """Ours, torchdiffeq's and an rtol 1e-9 float64 solution agree to 2 rtol (2e-3) relative: the solvers take
    different steps (controller details; torchdiffeq steps past t1 and interpolates back where diffrax stops
    at t1), so they agree to the tolerance, not to rounding. Negative controls: torchdiffeq with rtol = atol
    = 0.1, or on a 5% larger field, misses our solution by more than 2 tol."""
    run = dopri5_runs[(path, reverse)]
    rtol, name = 1e-3, f"dopri5 {path}{' reverse' if reverse else ''}"
    tol = 2 * rtol    # the global error of either solver is about rtol (measured up to 1.1e-3)
    check(f"{name} ours vs float64", run["ours"], run["exact"], tol=tol)
    check(f"{name} torchdiffeq vs float64", run["ref"], run["exact"], tol=tol)
    check(f"{name} ours vs torchdiffeq", run["ours"], run["ref"], tol=tol)
    MEASURED[f"{name} NFE ours - torchdiffeq"] = run["nfe"] - run["ref_nfe"]
    loose, _ = dopri5_reference(sit, run["transport"], run["x"], atol=0.1, rtol=0.1, reverse=reverse)
    assert rel_err(run["ours"], loose) > 2 * tol
    perturbed, _ = dopri5_reference(sit, run["transport"], run["x"], reverse=reverse, gain=1.05)
    assert rel_err(run["ours"], perturbed) > 2 * tol


def test_dopri5_evaluation_count_is_counted(dopri5_runs):
    """The reported NFE equals the network evaluations counted at run time."""
    for run in dopri5_runs.values():
        assert run["nfe"] == run["counted"] > 6, (run["nfe"], run["counted"])


# ---------------------------------------------------------------------------------------------
# SDE: one step per method and diffusion form, last steps, short whole runs.
# ---------------------------------------------------------------------------------------------

def ref_sde(sit, transport, *, form, norm, method, t0, t1, num_steps):
    ref = ref_transport(sit, transport)
    ref.path_sampler.compute_diffusion = intended_compute_diffusion(ref.path_sampler)
    sampler = sit[0].Sampler(ref)
    drift, diffusion = sampler._sde_parts(form, norm) if hasattr(sampler, "_sde_parts") else \
        sampler._Sampler__get_sde_diffusion_and_drift(diffusion_form=form, diffusion_norm=norm)
    return sit[0].integrators.sde(drift, diffusion, t0=t0, t1=t1, num_steps=num_steps, sampler_type=method), sampler


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("form", DIFFUSION_FORMS)
def test_sde_step_matches_reference(sit, form, method):
    """One step at t = 0.3 (dt = 0.04) with the same noise, for every path x prediction."""
    x = data(10)
    for path, prediction in COMBOS:
        transport = Transport(path, prediction)
        solver, _ = ref_sde(sit, transport, form=form, norm=0.9, method=method.capitalize(), t0=0.3, t1=0.34,
                            num_steps=2)
        torch.manual_seed(3)
        noise = torch.randn(to_torch(x).shape)
        torch.manual_seed(3)
        ref_step = solver._sde__Euler_Maruyama_step if method == "euler" else solver._sde__Heun_step
        want = from_torch(ref_step(to_torch(x), to_torch(x), solver.t[0], torch_model)[0])
        step = sde_euler_step if method == "euler" else sde_heun_step
        dt = solver.dt.numpy()
        ours = step(transport, jax_model, x, jnp.float32(solver.t[0].item()), dt, jnp.asarray(from_torch(noise)),
                    diffusion_form=form, diffusion_norm=0.9)[0]
        check(f"sde {method} step {form}", ours, want)
        # Negative control: the noise of another draw.
        other = step(transport, jax_model, x, jnp.float32(solver.t[0].item()), dt,
                     jnp.asarray(from_torch(noise)).transpose(0, 2, 1, 3), diffusion_form=form,
                     diffusion_norm=0.9)[0]
        assert fails(other, want)


@pytest.mark.parametrize("last_step", LAST_STEPS)
@pytest.mark.parametrize("path,prediction", COMBOS)
def test_sde_last_step_matches_reference(sit, path, prediction, last_step):
    transport = Transport(path, prediction)
    x = data(12)
    form = "sigma"
    size = 0.04 if last_step is not None else 0.0
    _, t1 = sde_interval(transport, diffusion_form=form, last_step=last_step, last_step_size=0.04)
    _, sampler = ref_sde(sit, transport, form=form, norm=1.0, method="Euler", t0=0.0, t1=1.0, num_steps=2)
    drift, _ = sampler._sde_parts(form, 1.0) if hasattr(sampler, "_sde_parts") else \
        sampler._Sampler__get_sde_diffusion_and_drift(diffusion_form=form, diffusion_norm=1.0)
    last = sampler._last_step(drift, last_step, size) if hasattr(sampler, "_last_step") else \
        sampler._Sampler__get_last_step(drift, last_step=last_step, last_step_size=size)
    want = from_torch(last(to_torch(x), torch.ones(B) * t1, torch_model))
    ours = sde_last_step(transport, jax_model, x, t1, last_step=last_step, last_step_size=0.04, diffusion_form=form)
    check(f"sde last step {last_step}", ours, want)
    if last_step is not None:   # Negative control: the step taken one step size early.
        early = sde_last_step(transport, jax_model, x, t1 - 0.04, last_step=last_step, last_step_size=0.04,
                              diffusion_form=form)
        assert fails(np.asarray(early) - np.asarray(x), want - np.asarray(x), tol=1e-3)


@pytest.mark.parametrize("path,prediction,form,last_step,method", [
    ("Linear", "velocity", "sigma", "Mean", "euler"), ("GVP", "score", "SBDM", "Tweedie", "heun"),
    ("VP", "noise", "increasing-decreasing", "Euler", "euler"), ("Linear", "noise", "constant", None, "heun")])
def test_sde_whole_run_matches_reference(sit, path, prediction, form, last_step, method):
    """5 grid points (4 steps) and the last step, with the reference's noise stream fed to ours."""
    transport = Transport(path, prediction)
    ref = ref_transport(sit, transport)
    ref.path_sampler.compute_diffusion = intended_compute_diffusion(ref.path_sampler)
    fn = sit[0].Sampler(ref).sample_sde(sampling_method=method.capitalize(), diffusion_form=form, diffusion_norm=0.5,
                                        last_step=last_step, last_step_size=0.04, num_steps=5)
    x = data(13)
    torch.manual_seed(21)
    noises = jnp.asarray(np.stack([from_torch(torch.randn(to_torch(x).shape)) for _ in range(4)]))
    torch.manual_seed(21)
    want = from_torch(fn(to_torch(x), torch_model)[-1])
    @jax.jit
    def run(x, noises):
        return sample_sde(transport, jax_model, x, jax.random.key(0), method=method, num_steps=5,
                          diffusion_form=form, diffusion_norm=0.5, last_step=last_step, last_step_size=0.04,
                          noise_fn=lambda k, i, xx: noises[i])
    check(f"sde {method} 5-point run", run(x, noises), want)
    # Negative control: the noise stream shifted by one step.
    assert fails(run(x, jnp.roll(noises, -1, axis=0)), want)


def test_sde_default_noise_is_fold_in_of_the_step():
    """sample_sde (jitted) draws step i's noise from normal(fold_in(key, i)): one Euler-Maruyama step equals
    the step function fed that noise; another key gives another sample."""
    key, x, transport = jax.random.key(5), data(14), Transport()
    run = jax.jit(functools.partial(sample_sde, transport, jax_model, num_steps=2, last_step=None))
    t0, t1 = sde_interval(transport, diffusion_form="sigma", last_step=None, last_step_size=0.04)
    grid = time_grid(t0, t1, 2)
    noise = jax.random.normal(jax.random.fold_in(key, 0), x.shape, x.dtype)
    want = sde_euler_step(transport, jax_model, x, jnp.float32(grid[0]), grid[1] - grid[0], noise)[0]
    check("sde default noise stream", run(x, key), want)
    assert fails(run(x, jax.random.key(6)), want)


# ---------------------------------------------------------------------------------------------
# Guidance and evaluation counts.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reference", "all"])
def test_guided_forward(sit, mode):
    """SiT's forward_with_cfg (3 channels) against the reference, and the all-channel mode against numpy;
    guided_model_fn is its first half."""
    x, t = data(15), jnp.asarray(T_INTERIOR)
    y = jnp.asarray([1, 2, NUM_CLASSES, NUM_CLASSES])   # [cond; null]
    xx, tt = jnp.concatenate([x, x]), jnp.concatenate([t, t])
    channels = guidance_channels(mode, C)
    ours = forward_with_cfg(jax_class_model, 1.5, channels)(xx, tt, y)
    out = np.asarray(jax_class_model(jnp.concatenate([x, x]), tt, y))[..., :C]
    if mode == "reference":
        if sit[1] is None:
            pytest.skip("the reference's models.py needs timm; only its transport package is loaded")
        net = sit[1].SiT(lambda a, b_, c: torch_class_model(a, b_, c), in_channels=C)
        want = from_torch(net.forward_with_cfg(to_torch(xx), torch.from_numpy(np.array(tt)),
                                               torch.from_numpy(np.array(y)), 1.5))
    else:
        cond, uncond = out[:B], out[B:]
        guided = uncond + 1.5 * (cond - uncond)
        want = np.concatenate([guided, guided])
    check(f"forward_with_cfg ({mode})", ours, want)
    half = guided_model_fn(jax_class_model, y[:B], NUM_CLASSES, 1.5, channels)(x, t)
    np.testing.assert_array_equal(half, np.asarray(ours)[:B])
    # Negative control: guidance with the halves swapped.
    swapped = forward_with_cfg(jax_class_model, 1.5, channels)(xx, tt, jnp.concatenate([y[B:], y[:B]]))
    assert fails(swapped, want)


@pytest.mark.parametrize("sde", [False, True])
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_fixed_step_evaluation_counts(method, sde):
    """model_evaluations equals the calls counted with the loops run in Python."""
    count = [0]

    def counted(x, t):
        count[0] += 1
        return jax_model(x, t)
    for last_step in (("Mean", None) if sde else ("Mean",)):
        count[0] = 0
        with jax.disable_jit():
            if sde:
                sample_sde(Transport(), counted, data(16), jax.random.key(0), method=method, num_steps=7,
                           last_step=last_step, noise_fn=lambda k, i, x: jnp.zeros_like(x))
            else:
                sample_ode(Transport(), counted, data(16), method=method, num_steps=7)
        assert model_evaluations(method, 7, sde=sde, last_step=last_step) == count[0] > 0
