"""SiT's samplers (dit_jax.transport.integrators) against the PyTorch statement of the official
transport package: one ODE step (euler, heun), short whole fixed-step solves, a whole dopri5 solve
against torchdiffeq within the solver tolerance, one SDE step (euler, heun) with identical noise per
diffusion form, each last step, short whole SDE runs, and the network-evaluation counts.

Both sides evaluate the same fixed network, a small random channel map and tanh of (x, t), on
B=2 latents of 4x4x4 (ours channels-last, the reference's NCHW): tests/transport_helpers.py. Relative
errors are max|ours - reference| / max|reference|; each family has a negative control.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.parity.sit import intended_compute_diffusion
from dit_jax.transport import (DIFFUSION_FORMS, LAST_STEPS, Transport, model_evaluations, sample_ode, sample_sde,
                               velocity_fn)
from dit_jax.transport.integrators import (ode_euler_step, ode_heun_step, sde_euler_step, sde_heun_step, sde_interval,
                                        sde_last_step, time_grid)
from helpers import rel_err
from transport_helpers import (B, COMBOS, MEASURED, check, data, fails, from_torch, jax_model, ref_transport,
                               to_torch, torch_model)
from transport_helpers import report_each_file, sit  # noqa: F401 - the files' fixtures

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")



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
# Evaluation counts.
# ---------------------------------------------------------------------------------------------

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
