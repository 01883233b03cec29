"""Post-hoc EMA in training: the train step's tracked profiles against EDM2's tracker on the step's
own params, snapshots written and resumed exactly, `dit-jax phema` reconstructing a std that
`sample --weights` reads, on one device, an 8-device FSDP mesh, and two processes."""

import os
import shutil
import sys

import jax
import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
from edm2_reference import phema_reference as ref  # noqa: E402
from helpers import run_8_devices, tiny_config  # noqa: E402

from dit_jax.cli import main  # noqa: E402
from dit_jax.train import phema_snapshots  # noqa: E402
from dit_jax.train.loop import train_and_evaluate  # noqa: E402

pytestmark = pytest.mark.slow  # trains tiny runs

PHEMA = {"phema.stds": (0.05, 0.1), "phema.snapshot_every": 2}


def snapshot(workdir, step, index):
    return [np.asarray(a) for a in jax.tree.leaves(phema_snapshots.load_profile(workdir, step, index))]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("phema"))
    train_and_evaluate(tiny_config(**PHEMA), wd)
    return wd


def test_train_step_tracks_edm2s_profiles():
    """The compiled train step (AdamW then the profiles) against EDM2's tracker fed the same params."""
    from dit_jax.train.programs import build_train_step
    from dit_jax.run import make_run
    config = tiny_config(**PHEMA, **{"optim.lr": 1e-2})
    program = build_train_step(make_run(config))
    state = program.init(None)
    start = [np.asarray(a, np.float64) for a in jax.tree.leaves(state.params)]
    rng = np.random.default_rng(0)
    trajectory = []
    for _ in range(8):
        batch = {"image": rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
                 "label": rng.integers(0, 10, (8,), dtype=np.int32)}
        state, _ = program.step(state, jax.device_put(batch, program.batch_sharding), None)
        trajectory.append([np.asarray(a, np.float64) for a in jax.tree.leaves(state.params)])
    for k, std in enumerate((0.05, 0.1)):
        ours = [np.asarray(a) for a in jax.tree.leaves(state.phema[k])]
        theirs = ref.track(trajectory, std, batch_size=8, start=start)
        wrong = ref.track(trajectory, std, batch_size=8, start=start, t_offset=-1)
        err = max(np.max(np.abs(o - t)) for o, t in zip(ours, theirs))
        off = max(np.max(np.abs(w - t)) for w, t in zip(wrong, theirs))
        # Measured: max abs 1.6e-8 and 1.9e-8 (params about 0.1-1); the control 3.0e-4 and 9.7e-4.
        assert err < 1e-7 and off > 1e-4, (std, err, off)


def test_snapshots_are_written_and_resume_exactly(run, tmp_path):
    steps = [m["step"] for m in phema_snapshots.list_snapshots(run)]
    assert steps == [2, 4, 6]
    wd = str(tmp_path / "resumed")
    train_and_evaluate(tiny_config(**PHEMA), wd, stop_after=5)  # crashes after 5; checkpoint 3, snapshot 4
    train_and_evaluate(tiny_config(**PHEMA), wd)                # resumes at 3: the profiles come back too
    for step in (2, 4, 6):
        for i in (0, 1):
            for a, b in zip(snapshot(run, step, i), snapshot(wd, step, i)):
                assert np.array_equal(a, b), (step, i)
    # The profiles are part of the state: a resume with other stds is refused.
    with pytest.raises(ValueError, match=r"phema.stds: checkpoint \[0.05, 0.1\], config \[0.05, 0.2\]"):
        train_and_evaluate(tiny_config(**{**PHEMA, "phema.stds": (0.05, 0.2), "total_steps": 8}), wd)


def test_reconstruction_matches_the_solver_and_samples(run, tmp_path, capsys):
    out = str(tmp_path / "w08")
    assert main(["phema", "--workdir", run, "--std", "0.08", "--out", out]) == 0
    from dit_jax.weights import load_weights
    params, _ = load_weights(out)
    snaps = [(t, s) for t in (2, 4, 6) for s in (0.05, 0.1)]
    coefs = ref.coefficients(snaps, 6, 0.08)
    expected = [sum(c * np.asarray(a, np.float64) for c, a in zip(coefs, arrays))
                for arrays in zip(*[snapshot(run, t, i) for t in (2, 4, 6) for i in (0, 1)])]
    got = [np.asarray(a) for a in jax.tree.leaves(params)]
    assert len(got) == len(expected)
    err = max(np.max(np.abs(g - e)) / max(np.max(np.abs(e)), 1e-30) for g, e in zip(got, expected))
    # Measured: 5.6e-8 of each array's largest value (float32 output of a float64 sum). Control: the
    # coefficients of another profile (std 0.1) are caught.
    wrong = ref.coefficients(snaps, 6, 0.1)
    off = max(np.max(np.abs(g - sum(c * np.asarray(a, np.float64) for c, a in zip(wrong, arrays))))
              for g, arrays in zip(got, zip(*[snapshot(run, t, i) for t in (2, 4, 6) for i in (0, 1)])))
    assert err < 2e-7 and off > 1e-5, (err, off)
    png = str(tmp_path / "g.png")
    assert main(["sample", "--weights", out, "--steps", "2", "--num", "2", "--out", png]) == 0
    assert os.path.exists(png)
    capsys.readouterr()
    assert main(["phema", "--workdir", run, "--std", "0.3", "--out", str(tmp_path / "x")]) == 2
    assert main(["phema", "--workdir", run, "--std", "0.005", "--out", str(tmp_path / "x")]) == 2
    err_lines = capsys.readouterr().err.splitlines()
    assert err_lines[0].startswith("error: --std 0.3") and err_lines[1].startswith("error: --std 0.005 is out of reach")
    assert not os.path.exists(tmp_path / "x")


def test_profiles_on_an_8_device_fsdp_mesh_match_one_device(run, tmp_path):
    wd = str(tmp_path / "mesh")
    run_8_devices(wd, **PHEMA, **{"mesh.data": 2, "mesh.fsdp": 4})
    for i in (0, 1):
        for a, b in zip(snapshot(run, 6, i), snapshot(wd, 6, i)):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_two_processes_write_the_snapshots_of_one(run, tmp_path):
    """Two jax.distributed processes (mesh data 2 x fsdp 2 over 4 devices) write the snapshots of one:
    those of the module's one-device run, within the tolerance that the 8-device mesh meets above (the
    reference is the run the file trains anyway, not a third one-process run of its own)."""
    from helpers import finish, start
    two = str(tmp_path / "two")
    finish(start(two, {"phema.stds": [0.05, 0.1], "phema.snapshot_every": 2}))
    assert [m["step"] for m in phema_snapshots.list_snapshots(two)] == [2, 4, 6]
    for step in (2, 4, 6):
        for i in (0, 1):
            for a, b in zip(snapshot(run, step, i), snapshot(two, step, i)):
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    shutil.rmtree(two)
