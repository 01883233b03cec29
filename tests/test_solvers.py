"""The few-step samplers (dit_jax.diffusion.solvers) against diffusers' schedulers, and the guidance interval.

Both sides run the SAME model function: a fixed deterministic function of (x, t), written once with
numpy weights and evaluated in jnp (ours) and torch (diffusers' side), with learned-sigma output
(2C channels; diffusers' side drops the variance as its DiT pipeline does). Schedule: DiT's linear
betas 1e-4 .. 0.02 over 1000 steps, given to diffusers as `trained_betas`. Every intermediate x_t
(the sample after each step, what diffusers' `step` returns) is compared; relative error =
max|ours - theirs| / max|theirs| per step, maximised over the steps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from dit_jax.diffusion import solvers  # noqa: E402
from dit_jax.diffusion.gaussian import create_diffusion, linear_betas  # noqa: E402
from dit_jax.diffusion.ancestral import apply_guidance, guided_model_fn  # noqa: E402
from dit_jax.diffusion.solvers import SOLVERS, SPACINGS, run_solver, solve, solver_timesteps  # noqa: E402

T = 1000
B, H, W_, C = 2, 4, 4, 4
TOL = 1e-5          # relative, float32, per step
NULL = 10           # null class of the guided model
SCALE = 4.0         # guidance scale
BETAS = linear_betas(T)
AC = create_diffusion("").alphas_cumprod   # the training schedule, float64

MEASURED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _report_measured():
    yield
    if MEASURED:   # shown with `pytest -s`
        print("\nlargest relative errors measured (per step, over all steps):")
        for name in sorted(MEASURED):
            print(f"  {name:<40} {MEASURED[name]:.2e}")


# ---------------------------------------------------------------------------------------------
# The model: numpy weights, one statement in jnp and one in torch (channels last on both sides).
# ---------------------------------------------------------------------------------------------

_rng = np.random.default_rng(7)
# Two weight sets: 0 = conditional, 1 = unconditional; plus a label embedding.
WEIGHTS = [dict(W=(_rng.standard_normal((C, 2 * C)) * 0.3).astype(np.float32),
                V=(_rng.standard_normal((C, 2 * C)) * 0.5).astype(np.float32),
                F=((1 + np.arange(2 * C)) / (300 + 50 * k)).astype(np.float32)) for k in range(2)]
EMB = (_rng.standard_normal((NULL + 1, 2 * C)) * 0.1).astype(np.float32)
LABELS = np.array([3, 7])


def jnp_f(x, t, w):
    """~eps for data near 0 (x itself, modulated by t) plus a nonlinear term in x and t; 2C channels."""
    tt = t.astype(jnp.float32)[:, None, None, None]
    return (jnp.concatenate([x, x], -1) * (0.9 + 0.1 * jnp.cos(tt * w["F"] / 3))
            + 0.2 * jnp.tanh(jnp.einsum("nhwc,co->nhwo", x, w["V"]) + jnp.sin(tt * w["F"]))
            + 0.1 * jnp.einsum("nhwc,co->nhwo", x, w["W"]))


def torch_f(x, t, w):
    tt = t.to(torch.float32)[:, None, None, None]
    F, V, W = (torch.from_numpy(w[k]) for k in "FVW")
    return (torch.cat([x, x], -1) * (0.9 + 0.1 * torch.cos(tt * F / 3))
            + 0.2 * torch.tanh(x @ V + torch.sin(tt * F)) + 0.1 * (x @ W))


def jnp_class_model(x, t, y):
    """The class-conditional model: weight set 0 for labels, 1 for the null class, plus EMB[y]."""
    null = (y == NULL)[:, None, None, None]
    return jnp.where(null, jnp_f(x, t, WEIGHTS[1]), jnp_f(x, t, WEIGHTS[0])) + jnp.asarray(EMB)[y][:, None, None, :]


def jnp_plain(x, t):
    return jnp_f(x, t, WEIGHTS[0])


@functools.lru_cache(maxsize=None)
def ours_model(guidance, interval=None):
    if guidance is None:
        return jnp_plain
    channels = 3 if guidance == "reference" else C
    return guided_model_fn(jnp_class_model, jnp.asarray(LABELS), NULL, SCALE, channels, interval=interval)


def torch_eps(x, t, guidance, interval=None):
    """What diffusers' DiT pipeline hands the scheduler: guided eps channels, variance dropped."""
    tb = t.expand(B)
    if guidance is None:
        return torch_f(x, tb, WEIGHTS[0])[..., :C]
    cond = torch_f(x, tb, WEIGHTS[0]) + torch.from_numpy(EMB[LABELS])[:, None, None, :]
    uncond = torch_f(x, tb, WEIGHTS[1]) + torch.from_numpy(EMB[NULL])
    channels = 3 if guidance == "reference" else C
    guided = uncond[..., :channels] + SCALE * (cond[..., :channels] - uncond[..., :channels])
    out = torch.cat([guided, cond[..., channels:]], -1)
    if interval is not None and not interval[0] <= int(t) / T <= interval[1]:
        out = cond
    return out[..., :C]


X_T = np.random.default_rng(0).standard_normal((B, H, W_, C)).astype(np.float32)


def scheduler(sampler, spacing, lower_order_final=True):
    common = dict(num_train_timesteps=T, trained_betas=BETAS, timestep_spacing=spacing)
    if sampler.startswith("dpm++"):
        return diffusers.DPMSolverMultistepScheduler(
            **common, solver_order=int(sampler[5]), algorithm_type="dpmsolver++", solver_type="midpoint",
            lower_order_final=lower_order_final)
    if sampler == "unipc":
        return diffusers.UniPCMultistepScheduler(**common, solver_type="bh2", predict_x0=True,
                                                 lower_order_final=lower_order_final)
    return diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)


@functools.partial(jax.jit, static_argnums=1)
def _normal(key, shape, i):
    return jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)


def ddim_noise(key, i):
    """The noise solve's DDIM step i draws (its documented contract), for diffusers' variance_noise."""
    return np.array(_normal(key, X_T.shape, i))


@functools.lru_cache(maxsize=None)
def diffusers_trajectory(sampler, steps, spacing, guidance=None, lower_order_final=True, interval=None, eta=0.0):
    sch = scheduler(sampler, spacing, lower_order_final)
    sch.set_timesteps(steps)
    x = torch.from_numpy(X_T)
    traj = []
    with torch.no_grad():
        for i, t in enumerate(sch.timesteps):
            eps = torch_eps(x, t, guidance, interval)
            if sampler == "ddim" and eta > 0:
                x = sch.step(eps, t, x, eta=eta, variance_noise=torch.from_numpy(ddim_noise(KEY, i))).prev_sample
            else:
                x = sch.step(eps, t, x).prev_sample
            traj.append(x.numpy().copy())
    return np.stack(traj), sch.timesteps.numpy()


KEY = jax.random.key(3)


@functools.lru_cache(maxsize=None)
def runner(sampler, guidance, interval):
    """One jitted loop per (sampler, model): the per-step tables are arguments, so every spacing,
    timestep override and patched weight of a given length reuses one compiled program."""
    model = ours_model(guidance, interval)
    return jax.jit(lambda tables, x, key: run_solver(tables, model, x, sampler=sampler, key=key,
                                                     return_trajectory=True))


def ours_trajectory(sampler, steps, spacing, guidance=None, interval=None, *, key=None, **kw):
    """solve(..., return_trajectory=True) as `solve` composes it: solver_tables, then run_solver."""
    tables = solvers.solver_tables(AC, sampler=sampler, steps=steps, spacing=spacing, key_given=key is not None, **kw)
    x0, traj = runner(sampler, guidance, interval)(tables, X_T, key)
    traj = np.asarray(traj)
    assert traj.shape == (steps, B, H, W_, C)
    np.testing.assert_array_equal(np.asarray(x0), traj[-1])
    return traj


def step_rel_err(ours, theirs) -> float:
    assert ours.shape == theirs.shape and np.all(np.isfinite(ours)), "shape mismatch or non-finite values"
    return max(float(np.max(np.abs(ours[k].astype(np.float64) - theirs[k])) / np.max(np.abs(theirs[k])))
               for k in range(len(theirs)))


def check(label, ours, theirs, tol=TOL):
    err = step_rel_err(ours, theirs)
    MEASURED[label] = max(err, MEASURED.get(label, 0.0))
    assert err <= tol, f"{label}: relative error {err:.3e} > {tol:.0e}"
    return err


# ---------------------------------------------------------------------------------------------
# Timesteps.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", SPACINGS)
def test_solver_timesteps_match_diffusers(spacing):
    schedulers = [(name, scheduler(name, spacing)) for name in ("dpm++2m", "unipc", "ddim")]
    for steps in list(range(1, 52)) + [99, 100, 250, 333, 500, 999]:
        for sampler, sch in schedulers:
            sch.set_timesteps(steps)
            expected = sch.timesteps.numpy()
            try:
                ours = solver_timesteps(T, steps, spacing, sampler)
            except ValueError:   # only where diffusers' own schedule repeats a timestep
                assert len(np.unique(expected)) < steps, (sampler, spacing, steps)
                continue
            np.testing.assert_array_equal(ours, expected, err_msg=f"{sampler} {spacing} {steps}")


def test_solver_timesteps_reject_repeats_and_bad_values():
    sch = scheduler("dpm++2m", "linspace")
    sch.set_timesteps(1000)
    assert len(np.unique(sch.timesteps.numpy())) < 1000   # diffusers repeats timesteps here
    with pytest.raises(ValueError, match="'linspace' does not give 1000 distinct timesteps"):
        solver_timesteps(T, 1000, "linspace")
    np.testing.assert_array_equal(solver_timesteps(T, 1000, "trailing"), np.arange(999, -1, -1))
    with pytest.raises(ValueError, match=r"spacing must be one of \('linspace', 'leading', 'trailing'\), got 'even'"):
        solver_timesteps(T, 10, "even")
    with pytest.raises(ValueError, match="steps must be between 1 and the 1000 training timesteps, got 0"):
        solver_timesteps(T, 0, "linspace")


# ---------------------------------------------------------------------------------------------
# Parity with diffusers: every step, every spacing, 10 and 25 steps, plain and guided.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("guidance", [None, "reference"])
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("sampler", SOLVERS)
def test_parity_with_diffusers(sampler, steps, guidance):
    for spacing in SPACINGS:
        theirs, _ = diffusers_trajectory(sampler, steps, spacing, guidance)
        ours = ours_trajectory(sampler, steps, spacing, guidance)
        check(sampler, ours, theirs)


@pytest.mark.parametrize("sampler", SOLVERS)
def test_parity_guidance_all_channels_and_interval(sampler):
    """Guidance on all eps channels (diffusers' pipeline), everywhere and within an interval."""
    for steps, spacing, interval in ((10, "linspace", None), (25, "trailing", None), (10, "leading", (0.3, 0.7))):
        theirs, _ = diffusers_trajectory(sampler, steps, spacing, "all", interval=interval)
        ours = ours_trajectory(sampler, steps, spacing, "all", interval=interval)
        check(sampler, ours, theirs)


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++3m"])
def test_parity_without_lower_order_final(sampler):
    """For fewer than 15 steps this changes the second-to-last DPM++3M step (the last stays first order)."""
    theirs, _ = diffusers_trajectory(sampler, 10, "linspace", lower_order_final=False)
    ours = ours_trajectory(sampler, 10, "linspace", lower_order_final=False)
    check(sampler, ours, theirs)
    if sampler == "dpm++3m":   # the setting matters here: it must change the result
        default, _ = diffusers_trajectory(sampler, 10, "linspace")
        assert step_rel_err(ours, default) > 100 * TOL


def test_parity_ddim_with_noise():
    for spacing in ("leading", "linspace"):
        theirs, _ = diffusers_trajectory("ddim", 10, spacing, eta=0.7)
        ours = ours_trajectory("ddim", 10, spacing, eta=0.7, key=KEY)
        check("ddim", ours, theirs)
        assert step_rel_err(ours, diffusers_trajectory("ddim", 10, spacing)[0]) > 0.05   # the noise is there


def test_fixed_sigma_model_output():
    """A model with C output channels (no learned sigma) is used as eps directly."""
    theirs, _ = diffusers_trajectory("dpm++2m", 10, "trailing")
    x0, traj = solve(AC, lambda x, t: jnp_plain(x, t)[..., :C], X_T, sampler="dpm++2m", steps=10,
                     spacing="trailing", return_trajectory=True)
    check("dpm++2m", np.asarray(traj), theirs)
    with pytest.raises(ValueError, match="must return 4 .* or 8 .* channels, got 5"):
        solve(AC, lambda x, t: jnp_plain(x, t)[..., :5], X_T, sampler="dpm++2m", steps=10)


# ---------------------------------------------------------------------------------------------
# Negative controls: one timestep off by one, or one weight wrong, must fail the parity check.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SOLVERS)
def test_one_timestep_off_by_one_fails_parity(sampler):
    theirs, ts = diffusers_trajectory(sampler, 10, "linspace")
    same = ours_trajectory(sampler, 10, "linspace", timesteps=ts)   # the override itself changes nothing
    np.testing.assert_array_equal(same, ours_trajectory(sampler, 10, "linspace"))
    for k in (0, 5):
        off = ts.copy()
        off[k] += -1 if k == 0 else 1   # t[0] is already T - 1 for linspace
        err = step_rel_err(ours_trajectory(sampler, 10, "linspace", timesteps=off), theirs)
        MEASURED[f"[control] {sampler} t[{k}] off by 1"] = err
        assert err > 10 * TOL, f"{sampler}: timestep {k} off by one went unnoticed ({err:.2e})"


@pytest.mark.parametrize("sampler,table", [("dpm++2m", "p1"), ("dpm++3m", "p2"), ("unipc", "k1"), ("unipc", "p0"),
                                           ("ddim", "de")])
def test_one_wrong_weight_fails_parity(sampler, table, monkeypatch):
    theirs, _ = diffusers_trajectory(sampler, 10, "linspace")
    real = solvers.step_coefficients

    def one_off(*args, **kw):
        z = real(*args, **kw)
        z[table] = z[table].copy()
        z[table][4] *= 1 + 1e-3   # one weight of one step, wrong in its 3rd digit
        return z

    monkeypatch.setattr(solvers, "step_coefficients", one_off)
    err = step_rel_err(ours_trajectory(sampler, 10, "linspace"), theirs)
    MEASURED[f"[control] {sampler} {table}[4] * (1 + 1e-3)"] = err
    assert err > 10 * TOL, f"{sampler}: a wrong weight in {table} went unnoticed ({err:.2e})"


# ---------------------------------------------------------------------------------------------
# jit, argument validation.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SOLVERS)
def test_solve_under_jit_is_one_loop_and_same_result(sampler):
    traced = []

    def counting_model(x, t):
        traced.append(1)
        return jnp_plain(x, t)

    kw = dict(sampler=sampler, steps=25, spacing="trailing")
    if sampler == "ddim":
        kw |= dict(eta=0.5, key=KEY)
    run = jax.jit(lambda x: solve(AC, counting_model, x, **kw))
    jitted = np.asarray(run(jnp.asarray(X_T)))
    assert len(traced) == 1   # the model is traced once: the 25 steps are one scan, not unrolled
    run(jnp.asarray(X_T) + 1)
    assert len(traced) == 1   # no retrace for new noise
    # The same numbers under jit, through the tables-as-arguments path the parity tests use, and
    # (one sampler, to keep the file fast) eagerly.
    via_tables = ours_trajectory(sampler, 25, "trailing", eta=kw.get("eta", 0.0), key=kw.get("key"))[-1]
    err = step_rel_err(via_tables[None], jitted[None])
    if sampler == "unipc":
        err = max(err, step_rel_err(np.asarray(solve(AC, jnp_plain, X_T, **kw))[None], jitted[None]))
    MEASURED[f"[same] {sampler}: solve eager / jit / tables as arguments"] = err
    assert err <= 1e-6


@pytest.mark.parametrize("kwargs,message", [
    (dict(sampler="dpm++"), r"sampler must be one of \('ddim', 'dpm\+\+2m', 'dpm\+\+3m', 'unipc'\), got 'dpm\+\+'"),
    (dict(steps=0), "steps must be an integer between 1 and the 1000 training timesteps, got 0"),
    (dict(steps=1001), "got 1001"),
    (dict(steps=2.5), "got 2.5"),
    (dict(spacing="uniform"), r"spacing must be one of \('linspace', 'leading', 'trailing'\), got 'uniform'"),
    (dict(eta=0.5), "eta applies to the sampler 'ddim' only; 'dpm\\+\\+2m'"),
    (dict(sampler="ddim", eta=-1.0), "eta must be a number >= 0, got -1.0"),
    (dict(sampler="ddim", eta=1.0), "pass a key"),
    (dict(sampler="unipc", lower_order_final=False), "unipc needs lower_order_final=True"),
    (dict(timesteps=[999, 500, 500, 1] + list(range(6))), "timesteps must decrease strictly"),
    (dict(timesteps=[999, 500]), "timesteps must be 10 integers"),
    (dict(timesteps=list(range(1000, 990, -1))), r"within \[0, 999\]"),
])
def test_argument_validation(kwargs, message):
    args = dict(sampler="dpm++2m", steps=10) | kwargs
    with pytest.raises(ValueError, match=message):
        solve(AC, jnp_plain, X_T, **args)


def test_bad_schedule_rejected():
    with pytest.raises(ValueError, match="alphas_cumprod must be the training schedule"):
        solve(AC[::-1], jnp_plain, X_T, sampler="ddim", steps=10)


# ---------------------------------------------------------------------------------------------
# The guidance interval of guided_model_fn.
# ---------------------------------------------------------------------------------------------

def _guided_parts(x, t, channels):
    out = jnp_class_model(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                          jnp.concatenate([jnp.asarray(LABELS), jnp.full((B,), NULL)]))
    return np.asarray(apply_guidance(out, SCALE, channels)[:B]), np.asarray(out[:B])


@pytest.mark.parametrize("channels", [3, C])
def test_guidance_interval(channels):
    x = jnp.asarray(X_T)
    guided_all, cond = None, None
    for t_val, inside in ((299, False), (300, True), (500, True), (700, True), (701, False), (999, False)):
        t = jnp.full((B,), t_val, jnp.int32)
        guided, cond = _guided_parts(x, t, channels)
        default = np.asarray(guided_model_fn(jnp_class_model, jnp.asarray(LABELS), NULL, SCALE, channels)(x, t))
        np.testing.assert_array_equal(default, guided)   # off by default: the existing output, bit for bit
        everywhere = guided_model_fn(jnp_class_model, jnp.asarray(LABELS), NULL, SCALE, channels, interval=(0, 1))
        np.testing.assert_array_equal(np.asarray(everywhere(x, t)), guided)
        fn = guided_model_fn(jnp_class_model, jnp.asarray(LABELS), NULL, SCALE, channels, interval=(0.3, 0.7),
                             num_timesteps=T)
        np.testing.assert_array_equal(np.asarray(fn(x, t)), guided if inside else cond, err_msg=str(t_val))
        assert np.max(np.abs(guided - cond)) > 0.1   # the two differ, so the choice is seen
    # Per sample: a batch with one timestep inside and one outside.
    t = jnp.asarray([500, 900], jnp.int32)
    guided, cond = _guided_parts(x, t, channels)
    out = np.asarray(guided_model_fn(jnp_class_model, jnp.asarray(LABELS), NULL, SCALE, channels,
                                     interval=(0.3, 0.7))(x, t))
    np.testing.assert_array_equal(out[0], guided[0])
    np.testing.assert_array_equal(out[1], cond[1])
    # num_timesteps scales the noise level: t = 150 of 250 is s = 0.6.
    t = jnp.full((B,), 150, jnp.int32)
    guided, cond = _guided_parts(x, t, channels)
    fn = guided_model_fn(jnp_class_model, jnp.asarray(LABELS), NULL, SCALE, channels, interval=(0.5, 1.0),
                         num_timesteps=250)
    np.testing.assert_array_equal(np.asarray(fn(x, t)), guided)


@pytest.mark.parametrize("interval,message", [((0.8, 0.2), r"0 <= lo <= hi <= 1 .*got \(0.8, 0.2\)"),
                                              ((-0.1, 0.5), r"got \(-0.1, 0.5\)"),
                                              ((0.5,), "must be a pair"), ("ab", "must be a pair")])
def test_guidance_interval_validation(interval, message):
    with pytest.raises(ValueError, match=message):
        guided_model_fn(jnp_class_model, jnp.asarray(LABELS), NULL, SCALE, 3, interval=interval)
    with pytest.raises(ValueError, match="num_timesteps must be a positive integer .*got 0"):
        guided_model_fn(jnp_class_model, jnp.asarray(LABELS), NULL, SCALE, 3, interval=(0, 1), num_timesteps=0)
