"""Post-hoc EMA (EDM2): the reconstruction coefficients and the tracked EMA update against a float64
statement of EDM2's solver and tracker (tests/edm2_reference), each with a negative control, and the
bad stds the reconstruction refuses."""

import os
import sys

import jax
import numpy as np
import pytest

from dit_jax.exit_codes import BadInput
from dit_jax.jobs.phema import plan
from dit_jax.train import phema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edm2_reference import phema_reference as ref  # noqa: E402

RNG = np.random.default_rng(0)


def random_snapshots(n=12, total=4000):
    steps = np.sort(RNG.choice(np.arange(50, total), n, replace=False))
    return [(float(t), s) for t in steps for s in (0.05, 0.1)]


def test_exponent_of_std():
    stds = np.asarray([0.01, 0.05, 0.1, 0.2, 0.28])
    exps = phema.std_to_exp(stds)
    np.testing.assert_allclose(exps, [ref.exponent(s) for s in stds], rtol=1e-14)
    np.testing.assert_allclose(phema.exp_to_std(exps), stds, rtol=1e-12)  # the inverse, EDM2's Eq. 123


@pytest.mark.parametrize("seed", range(4))
def test_coefficients_match_edm2s_solver(seed):
    global RNG
    RNG = np.random.default_rng(seed)
    snaps = random_snapshots()
    t_out = snaps[-1][0] if seed % 2 == 0 else snaps[len(snaps) // 2][0]  # the last, or a middle snapshot
    used = [(t, s) for t, s in snaps if t <= t_out]
    errs = []
    for std in (0.03, 0.07, 0.12, 0.2):
        ours = phema.solve_coefficients([t for t, _ in used], [s for _, s in used], t_out, std)[:, 0]
        theirs = ref.coefficients(snaps, t_out, std)
        err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
        errs.append(err)
        # Negative control: the Gram matrix with min(t_a, t_b) in place of max (a plausible slip).
        wrong_inner = ref.inner
        ref.inner = lambda ta, sa, tb, sb: wrong_inner(ta, sa, tb, sb) * max(ta, tb) / min(ta, tb)
        try:
            wrong = ref.coefficients(snaps, t_out, std)
        finally:
            ref.inner = wrong_inner
        assert np.max(np.abs(ours - wrong)) / np.max(np.abs(theirs)) > 1e-3
    # Measured over these 16 solves: at most 4.1e-14 of the largest coefficient (float64 solves).
    assert max(errs) < 1e-12, errs


def test_closed_form_inner_products_are_the_responses_overlap():
    """EDM2's closed form is the continuous-time limit of the discrete responses' overlap: checked
    independently of the formula, by summing the responses over 200k steps."""
    length = 200_000
    for (ta, sa), (tb, sb) in [((150_000, 0.05), (199_999, 0.1)), ((120_000, 0.1), (80_000, 0.13))]:
        ra, rb = ref.response(ta, sa, length), ref.response(tb, sb, length)
        np.testing.assert_allclose(phema.correlation(ta, sa, tb, sb), np.sum(ra * rb), rtol=1e-3)


def test_fit_error_is_zero_for_a_tracked_profile_and_grows_away_from_them():
    snaps = [(t, s) for t in np.linspace(100, 1000, 10) for s in (0.05, 0.1)]
    t, s = np.asarray(snaps).T
    err = phema.fit_error(t, s, 1000, [0.05, 0.08, 0.15, 0.005])
    assert err[0] < 1e-6 and err[1] < 0.01 and err[2] < 0.05 and err[3] > 0.5
    # The exact residual equals the discrete one measured on the responses (over 1000 steps, to 1e-2).
    X = phema.solve_coefficients(t, s, 1000, 0.15)[:, 0]
    target = ref.response(1000, 0.15, 1001)
    fit = sum(x * ref.response(ti, si, 1001) for x, ti, si in zip(X, t, s))
    np.testing.assert_allclose(np.linalg.norm(fit - target) / np.linalg.norm(target), err[2], rtol=0.05)


def test_bad_stds_are_refused_with_the_reachable_range():
    snaps = [dict(step=int(t), stds=[0.05, 0.1]) for t in np.linspace(100, 1000, 10)]
    inputs, coefs, error, step = plan(snaps, 0.08, None, 0.1)
    assert step == 1000 and len(inputs) == 20 and abs(coefs.sum() - 1) < 1e-12 and error < 0.01
    with pytest.raises(BadInput, match=r"--std 0.3: a relative standard deviation must be in \(0, 0.289\)"):
        plan(snaps, 0.3, None, 0.1)
    with pytest.raises(BadInput, match=r"--std 0.005 is out of reach .* 70\.\d% off .* stds 0.03..0.23 are within"):
        plan(snaps, 0.005, None, 0.1)
    with pytest.raises(BadInput, match=r"--step 150: the reconstruction time must be one of"):
        plan(snaps, 0.08, 150, 0.1)
    with pytest.raises(BadInput, match="no post-hoc EMA snapshots"):
        plan([], 0.08, None, 0.1)


def test_update_matches_edm2s_tracker():
    """phema.update over 40 random parameter trajectories against EDM2's PowerFunctionEMA (float64)."""
    steps = 40
    traj = [[RNG.normal(size=(5, 3)) * (1 + 0.02 * k), RNG.normal(size=(4,)) + 0.1 * k] for k in range(steps)]
    start = [np.zeros((5, 3)), np.zeros(4)]
    exps = tuple(float(e) for e in phema.std_to_exp([0.05, 0.1]))
    update = jax.jit(phema.update, static_argnums=3)
    tracked = (tuple(np.asarray(a, np.float32) for a in start),) * 2
    for k, params in enumerate(traj):
        tracked = update(tracked, tuple(np.asarray(a, np.float32) for a in params), np.int32(k), exps)
    for ours, std in zip(tracked, (0.05, 0.1)):
        theirs = ref.track(traj, std, batch_size=256, start=start)  # images, not steps: the same betas
        wrong = ref.track(traj, std, batch_size=256, start=start, t_offset=-1)  # n counted before the batch
        err = max(np.max(np.abs(np.asarray(o) - t)) / np.max(np.abs(t)) for o, t in zip(ours, theirs))
        off = max(np.max(np.abs(w - t)) / np.max(np.abs(t)) for w, t in zip(wrong, theirs))
        # Measured: 4.2e-8 and 9.9e-8 (float32 state); the off-by-one variant differs by 1.3e-2 and 2.2e-2.
        assert err < 3e-7 and off > 1e-3, (std, err, off)


def test_config_problems():
    import ml_collections
    c = ml_collections.ConfigDict({"phema": {"stds": (0.05, 0.1), "snapshot_every": 100}})
    assert phema.config_problems(c) == []
    c.phema.snapshot_every = 0
    assert phema.config_problems(c) == ["phema.snapshot_every must be > 0 when phema.stds is set: the reconstruction "
                                        "reads the snapshots (e.g. --config.phema.snapshot_every=total_steps/16 or "
                                        "more often)"]
    c.phema.update(stds=(0.3, 0.3), snapshot_every=1)
    assert phema.config_problems(c) == [f"phema.stds: each std must be in (0, {phema.MAX_STD}) (EDM2's range), got 0.3"] * 2 \
        + ["phema.stds must be distinct, got (0.3, 0.3)"]
