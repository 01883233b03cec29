"""The training system: config errors, exact resume, meshes, preemption, incompatible checkpoints."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import Child
from dit_jax.configs.files import load_config
from dit_jax.train.loop import train_and_evaluate
from helpers import ROOT, env_without_xla_flags, final_params, losses, tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("full"))
    train_and_evaluate(tiny_config(), wd)
    return wd


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(uninterrupted, tmp_path):
    wd = str(tmp_path)
    train_and_evaluate(tiny_config(), wd, stop_after=4)   # dies after step 4; last checkpoint at 3
    assert sorted(losses(wd)) == [1, 2, 3, 4]
    train_and_evaluate(tiny_config(), wd)                # resumes from 3: same data order, same noise
    full, resumed = losses(uninterrupted), losses(wd)
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == full[step], (step, resumed[step], full[step])
    (a, _, sa), (b, _, sb) = final_params(uninterrupted), final_params(wd)
    assert sa == sb == 6
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_incompatible_checkpoint_is_refused(uninterrupted, tmp_path):
    import shutil
    wd = str(tmp_path / "copy")
    shutil.copytree(uninterrupted, wd)
    before = sorted(os.listdir(os.path.join(wd, "checkpoints")))
    with pytest.raises(ValueError, match=r"model.depth: checkpoint 2, config 3"):
        train_and_evaluate(tiny_config(**{"model.depth": 3, "total_steps": 9}), wd)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == before  # nothing lost


def test_half_written_checkpoint_is_never_latest(uninterrupted, tmp_path):
    import shutil

    from dit_jax.train.checkpoint import make_manager
    wd = str(tmp_path / "copy")
    shutil.copytree(uninterrupted, wd)
    # What an interrupted Orbax save leaves: a temporary directory for a later step.
    os.makedirs(os.path.join(wd, "checkpoints", "9.orbax-checkpoint-tmp-1234", "state"))
    assert make_manager(wd, 3, 1).latest_step() == 6


@pytest.mark.parametrize("changes, message", [
    ({"data.image_size": 16}, "data.image_size 16 != model.input_size 8"),
    ({"data.num_classes": 7}, "data.num_classes 7 != model.num_classes 10"),
    ({"data.latents": "sd-vae-ft-ema"}, r"data.latents must be one of \(.., .encode., .dataset.\)"),
    ({"data.latents": "encode"}, "needs the VAE: set --config.data.vae"),
    ({"mesh.data": 2}, "needs 2 devices, there are 1"),
    ({"model.attention": "flash"}, "attention must be one of"),
    ({"ema_decay": 1.5}, "ema_decay must be in"),
    ({"data.name": "no_such_dataset"}, "no_such_dataset"),
])
def test_bad_config_fails_early_and_clearly(tmp_path, changes, message):
    with pytest.raises(Exception, match=message):
        train_and_evaluate(tiny_config(**changes), str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))


def test_unknown_model_name_and_config_key():
    with pytest.raises(ValueError, match="unknown model name 'XXL/2'"):
        load_config(os.path.join(ROOT, "configs", "dit.py") + ":XXL/2")
    from dit_jax.cli import main
    assert main(["train", "--config.batch_sizee=3"]) == 2


def test_paper_configs_describe_the_recipe():
    for name in ("S/2", "B/4", "L/8", "XL/2", "XL/2-512"):
        c = load_config(os.path.join(ROOT, "configs", "dit.py") + ":" + name)
        assert (c.optim.lr, c.optim.weight_decay, c.batch_size, c.ema_decay) == (1e-4, 0.0, 256, 0.9999)
        assert c.model.class_dropout_prob == 0.1 and c.model.learn_sigma and c.diffusion.num_timesteps == 1000
        assert c.model.input_size == (64 if name.endswith("512") else 32)
    assert load_config(os.path.join(ROOT, "configs", "dit.py") + ":XL/2").total_steps == 7_000_000


# One child process with 8 CPU devices for the three tests below (one start and one backend instead of
# three): it trains tiny_config on a (data 2, fsdp 4) mesh, then on (data 1, fsdp 8) stopping after step 3
# as a crash, each saying "RUN ok" when done, and last asks for a batch of 12, which must fail: its
# traceback on stderr and a nonzero exit.
EIGHT_DEVICE_RUNS = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from dit_jax.train.loop import train_and_evaluate
for workdir, changes in json.loads(sys.argv[1]):
    stop = changes.pop("_stop_after", None)
    train_and_evaluate(tiny_config(**changes), workdir, stop_after=stop)
    print("RUN ok " + workdir, flush=True)
"""


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    root = tmp_path_factory.mktemp("eight")
    runs = {"mesh": (str(root / "mesh"), {"mesh.data": 2, "mesh.fsdp": 4}),
            "moved": (str(root / "moved"), {"mesh.data": 1, "mesh.fsdp": 8, "_stop_after": 3}),
            "batch12": (str(root / "batch12"), {"batch_size": 12})}
    script = EIGHT_DEVICE_RUNS.format(tests=os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", script, json.dumps(list(runs.values()))], capture_output=True,
                         text=True, env=env_without_xla_flags(), timeout=900)
    return res, {name: wd for name, (wd, _) in runs.items()}


def _ran(res, workdir):
    assert f"RUN ok {workdir}" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]


def test_same_steps_on_one_device_and_an_8_device_fsdp_mesh(uninterrupted, eight_devices):
    res, wds = eight_devices
    _ran(res, wds["mesh"])
    assert "'data': 2, 'fsdp': 4" in res.stdout
    one, eight = losses(uninterrupted), losses(wds["mesh"])
    np.testing.assert_allclose([eight[s] for s in range(1, 7)], [one[s] for s in range(1, 7)], rtol=2e-5)
    (a, _, _), (b, _, _) = final_params(uninterrupted), final_params(wds["mesh"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)


def test_checkpoint_restores_onto_another_mesh(uninterrupted, eight_devices):
    """Saved by 8 devices with FSDP (pure data parallel here: fsdp=8), resumed on 1 device."""
    res, wds = eight_devices
    _ran(res, wds["moved"])
    wd = wds["moved"]
    train_and_evaluate(tiny_config(), wd)  # one device now
    one, moved = losses(uninterrupted), losses(wd)
    np.testing.assert_allclose([moved[s] for s in range(1, 7)], [one[s] for s in range(1, 7)], rtol=2e-5)


def test_batch_not_divisible_by_devices(eight_devices):
    res, wds = eight_devices
    assert res.returncode != 0 and f"RUN ok {wds['batch12']}" not in res.stdout
    assert "batch_size 12 is not divisible by the 8 devices" in res.stderr


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    wd = str(tmp_path / "preempt")
    cmd = [sys.executable, "-m", "dit_jax.cli", "train", f"--workdir={wd}", "--config.total_steps=100000",
           "--config.model.hidden_size=32", "--config.model.depth=2", "--config.model.num_heads=2",
           "--config.batch_size=8", "--config.log_every=1", "--config.checkpoint_every=100000",
           "--config.sample.every=0", "--config.evals.digits.kind=", "--config.optim.warmup_steps=0"]
    # tiny_config's step (no warmup, as the module's runs): the child loads it from the persistent
    # compilation cache that the earlier runs filled, instead of compiling it again.
    proc = Child(cmd, cwd=ROOT)
    proc.wait_for("step 5/", 300)  # training is under way
    proc.send_signal(signal.SIGTERM)
    out = proc.finish(300)
    assert proc.returncode == 75, out  # exit_codes.PREEMPTED: a retry loop reruns the command
    assert "preempted: checkpoint saved at step" in out
    from dit_jax.train.checkpoint import make_manager
    saved = make_manager(wd, 3, 1).latest_step()
    assert saved is not None and saved >= 5
    res = train_and_evaluate(tiny_config(total_steps=saved + 2, checkpoint_every=1000), wd)
    assert res["step"] == saved + 2


def test_converted_weights_initialise_training(tmp_path):
    from dit_jax.models.dit import init_params
    from dit_jax.configs.base import to_dit_config
    from dit_jax.weights import save_weights
    c = tiny_config(total_steps=1)
    cfg = to_dit_config(c.model)
    params = jax.tree.map(lambda a: a + 0.5, init_params(cfg, jax.random.key(5)))
    c.init_weights = save_weights(str(tmp_path / "w"), params, cfg)
    c.ema_decay = 0.999999  # after one step the EMA is still (almost exactly) the initial weights
    train_and_evaluate(c, str(tmp_path / "run"))
    ema, _, _ = final_params(str(tmp_path / "run"))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ema)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5)


def test_sample_command_reads_a_workdir(uninterrupted, tmp_path, capsys):
    from PIL import Image

    from dit_jax.cli import main
    out = tmp_path / "g.png"
    assert main(["sample", "--workdir", uninterrupted, "--num", "10", "--steps", "5", "--nrow", "10",
                 "--upscale", "1", "--out", str(out)]) == 0
    assert "EMA weights" in capsys.readouterr().out
    assert Image.open(out).size == (10 * 10 + 2, 12)


def test_repeated_sample_commands_build_their_sampler_once(uninterrupted, tmp_path, capsys):
    """`dit-jax sample` twice in one process with the same model and settings reuses the sampler it built
    (jobs.sample.cached_sampler): the same grid, one build; other settings build another. The weights are
    the program's arguments, not its constants: other weights through the kept sampler give the grid that
    a freshly built one gives, which differs from the first weights' grid."""
    from dit_jax.cli import main
    from dit_jax.jobs import sample as job
    from dit_jax.sampling.run_sampler import SamplerSettings
    argv = ["sample", "--workdir", uninterrupted, "--num", "4", "--upscale", "1", "--steps", "3", "--out"]
    job._SAMPLERS.clear()
    assert main([*argv, str(tmp_path / "a.png")]) == 0 and main([*argv, str(tmp_path / "b.png")]) == 0
    assert len(job._SAMPLERS) == 1
    first = (tmp_path / "a.png").read_bytes()
    assert (tmp_path / "b.png").read_bytes() == first
    params, cfg, source, schedule = job.load_workdir(uninterrupted)
    other = jax.tree.map(lambda a: -a, params)
    grid = dict(num=4, upscale=1, schedule=schedule)
    job.write_grid(other, cfg, source, str(tmp_path / "kept.png"), SamplerSettings(steps="3", cfg_scale=4.0), **grid)
    assert len(job._SAMPLERS) == 1  # the command's sampler, kept
    job._SAMPLERS.clear()
    job.write_grid(other, cfg, source, str(tmp_path / "fresh.png"), SamplerSettings(steps="3", cfg_scale=4.0), **grid)
    assert (tmp_path / "kept.png").read_bytes() == (tmp_path / "fresh.png").read_bytes() != first
    assert main([*argv[:-3], "--steps", "2", "--out", str(tmp_path / "c.png")]) == 0
    assert len(job._SAMPLERS) == 2  # other settings: another sampler


def test_sample_command_uses_the_runs_noise_schedule(tmp_path):
    """`dit-jax sample --workdir` of a run trained with another schedule (cosine, 100 steps) samples
    with that schedule: its grid is the one the sampler builder draws with the cosine diffusion, and
    not the one it draws with the default (linear, 1000 steps)."""
    import dataclasses

    from PIL import Image

    from dit_jax.cli import main
    from dit_jax.diffusion.gaussian import create_diffusion
    from dit_jax.jobs.sample import grid_labels
    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.sampling.grids import make_grid, to_uint8
    from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler, fetch
    from dit_jax.run import make_run
    wd, out = str(tmp_path / "cosine"), tmp_path / "g.png"
    config = tiny_config(total_steps=1, **{"diffusion.noise_schedule": "squaredcos_cap_v2",
                                           "diffusion.num_timesteps": 100})
    train_and_evaluate(config, wd)
    assert main(["sample", "--workdir", wd, "--num", "4", "--steps", "3", "--seed", "5", "--nrow", "4",
                 "--upscale", "1", "--out", str(out)]) == 0
    got = np.asarray(Image.open(out))
    params, cfg, _ = final_params(wd)
    run = make_run(config, vae=None, mesh=make_mesh(devices=jax.devices()))
    labels = np.asarray(grid_labels(None, 4, cfg.num_classes, 5), np.int32)
    grids, samples = {}, {}
    for name, diffusion in (("cosine", create_diffusion("", noise_schedule="squaredcos_cap_v2",
                                                        learn_sigma=cfg.learn_sigma, diffusion_steps=100)),
                            ("linear", create_diffusion("", learn_sigma=cfg.learn_sigma))):
        # finite_check as `dit-jax sample` builds it: the cosine program is the command's (a cache hit).
        sample = build_sampler(dataclasses.replace(run, objective=diffusion), SamplerSettings(steps="3", cfg_scale=4.0),
                               finite_check=True)
        samples[name] = fetch(sample(params, labels, jax.random.PRNGKey(5)), 4)
        grids[name] = make_grid(to_uint8(samples[name]), 4)
    np.testing.assert_array_equal(got.reshape(grids["cosine"].shape), grids["cosine"])
    # Negative control: the default schedule samples something else. A one-step model's samples mostly
    # saturate to 0 or 255 either way (about 1% of pixels differ), so compare the samples themselves
    # (measured: up to thousands apart).
    assert np.mean(got.reshape(grids["linear"].shape) != grids["linear"]) > 0
    assert np.abs(samples["cosine"] - samples["linear"]).max() > 1.0


def test_goodput_ledger_counts_steps_run_again_after_a_crash(tmp_path, capsys):
    """A run that dies at step 5 (last checkpoint at 3) and is resumed runs steps 4-5 again: the
    ledger shows them as lost time; an uninterrupted run shows none."""
    from dit_jax.train.goodput import NAME
    crashed, clean = str(tmp_path / "crashed"), str(tmp_path / "clean")
    train_and_evaluate(tiny_config(), crashed, stop_after=5)  # dies as a crash would, after the step-3 save
    result = train_and_evaluate(tiny_config(), crashed)
    with open(os.path.join(crashed, NAME)) as f:
        ledger = json.load(f)
    summary = ledger["summary"]
    assert summary["sessions"] == 2 and summary["rerun_steps"] == 2
    assert [s["start_step"] for s in ledger["sessions"]] == [0, 3]
    assert summary["seconds"]["rerun"] > 0 and summary["seconds"]["train"] > 0
    assert 0 < summary["goodput"] < 1 and result["goodput"] == pytest.approx(summary["goodput"])
    rows = [json.loads(line) for line in open(os.path.join(crashed, "metrics.jsonl"))]
    assert all(0 < r["goodput"] <= 1 for r in rows if "loss" in r)
    out = capsys.readouterr().out
    assert "goodput" in out and "2 steps run again" in out
    # Negative control: the same run without the crash loses nothing.
    train_and_evaluate(tiny_config(), clean)
    with open(os.path.join(clean, NAME)) as f:
        clean_summary = json.load(f)["summary"]
    assert clean_summary["rerun_steps"] == 0 and clean_summary["seconds"]["rerun"] == 0
    assert clean_summary["sessions"] == 1
