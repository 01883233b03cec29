"""Operating a run: exit codes, jax.distributed flags under SLURM, step-time accounting, profiles,
the compilation cache, time-based checkpoints and the MFU peak table."""

import glob
import gzip
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import ml_collections
import pytest
from conftest import Child, PortReservation, finish_all

from dit_jax.cli import main
from dit_jax import exit_codes
from dit_jax.train.metrics_log import peak_flops
from dit_jax.train.timing import TEST_CLOCK_RATE, SaveClock
from helpers import ROOT, tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

TINY = ["--config.model.hidden_size=32", "--config.model.depth=2", "--config.model.num_heads=2",
        "--config.batch_size=8", "--config.sample.every=0", "--config.evals.digits.kind="]


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("kind, tflops", [
    ("TPU v2", 22.5), ("TPU v3", 61.5), ("TPU v4", 275), ("TPU v5", 459), ("TPU v5p", 459), ("TPU v5 lite", 197),
    ("TPU v5e", 197), ("TPU v6 lite", 918), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H200", 989), ("NVIDIA GH200 480GB", 989), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100-PCIE-40GB", 312), ("cpu", 0),
])
def test_peak_flops_of_each_device_kind(kind, tflops):
    assert peak_flops(SimpleNamespace(device_kind=kind)) == tflops * 1e12


def test_save_clock_is_due_after_the_interval_and_restarts_at_each_save():
    now = [0.0]
    clock = SaveClock(every_minutes=2, clock=lambda: now[0])
    now[0] = 119.0
    assert not clock.due(True, 1)
    now[0] = 121.0
    assert clock.due(False, 1)      # one host decides every step
    assert not clock.due(False, 2)  # several hosts only at a step they all reach
    clock.saved()
    assert not clock.due(True, 1)
    assert not SaveClock(0, clock=lambda: 1e9).due(True, 1)  # 0: off


@pytest.fixture(scope="module")
def operated_run(tmp_path_factory):
    """One run with everything on: a profile of steps 3-4, a save every 1e-6 minutes (each step), a
    compilation cache of its own."""
    from dit_jax.train.loop import train_and_evaluate
    tmp = tmp_path_factory.mktemp("ops")
    wd, cache = str(tmp / "run"), str(tmp / "cache")
    c = tiny_config(checkpoint_every=1000, keep_checkpoints=10, checkpoint_every_minutes=1e-6,
                    compilation_cache_dir=cache, **{"profile.start_step": 2, "profile.num_steps": 2})
    t0 = time.perf_counter()
    train_and_evaluate(c, wd)
    return SimpleNamespace(workdir=wd, cache=cache, wall=time.perf_counter() - t0)


def test_first_eta_and_img_per_s_exclude_compilation(operated_run):
    first, *rest = rows(operated_run.workdir)
    assert first["step"] == 1 and first["compile_s"] > 0
    # Before: the first ETA was 5 x (compile + step) for the 5 steps left, far above the compile time.
    assert first["eta_s"] < first["compile_s"]
    assert all("compile_s" not in r for r in rest)
    assert all(r["input_wait_s"] > 0 and r["img_per_s"] > 0 for r in [first, *rest])
    # A window's img/s counts training only: 8 images over less than the window's wall time.
    assert sum(8 / r["img_per_s"] for r in [first, *rest]) < operated_run.wall - first["compile_s"]


def test_checkpoint_time_is_logged_and_minutes_interval_saves(operated_run):
    from dit_jax.train.checkpoint import make_manager
    # checkpoint_every=1000, total 6: only step 6 by steps; every step by the minutes interval.
    assert make_manager(operated_run.workdir, 10, 1).all_steps() == [1, 2, 3, 4, 5, 6]
    # The save after step N blocks in the window of step N+1.
    assert all(r["checkpoint_s"] > 0 for r in rows(operated_run.workdir)[1:])


def test_profile_writes_an_xplane_trace_with_step_annotations(operated_run):
    planes = glob.glob(os.path.join(operated_run.workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(planes) == 1 and os.path.getsize(planes[0]) > 0
    traces = glob.glob(os.path.join(os.path.dirname(planes[0]), "*.trace.json.gz"))
    with gzip.open(traces[0]) as f:
        events = json.load(f)["traceEvents"]
    steps = sorted({int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "args" in e})
    assert steps == [2, 3]  # 0-based steps start+2 and start+3


def test_profile_hosts_select_processes():
    from dit_jax.train.profile import StepProfiler
    p = ml_collections.ConfigDict(dict(start_step=1, num_steps=3, hosts="1,2"))
    assert StepProfiler(p, "/tmp/unused", 10).end == -1   # this is process 0: not traced
    p.hosts = "all"
    assert (StepProfiler(p, "/tmp/unused", 10).begin, StepProfiler(p, "/tmp/unused", 10).end) == (11, 14)


def test_compilation_cache_holds_the_train_step(operated_run):
    assert glob.glob(os.path.join(operated_run.cache, "jit_train_step-*"))


@pytest.mark.parametrize("error, code", [
    (exit_codes.Preempted(7), 75), (exit_codes.Diverged("loss is nan at step 3"), 3),
    (FloatingPointError("invalid value (nan) encountered"), 3), (ValueError("bad config: x"), 2),
])
def test_train_exit_codes(monkeypatch, capsys, tmp_path, error, code):
    import dit_jax.train.loop as loop

    def stops(config, workdir):
        raise error
    monkeypatch.setattr(loop, "train_and_evaluate", stops)
    assert main(["train", f"--workdir={tmp_path}"]) == code
    err = capsys.readouterr().err
    assert err == ("" if code == 75 else f"error: {error}\n")


def test_train_help_lists_the_launch_flags_and_exit_codes(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("--distributed_timeout", "--local_device_ids", "--workdir", "75 preempted"):
        assert text in out


@pytest.mark.parametrize("flags, message", [
    (["--local_device_ids=0,x"], "--local_device_ids takes comma-separated integers"),
    (["--local_device_ids=0,1"], "apply to multi-host runs: add --distributed"),
    (["--distributed_timeout=10"], "apply to multi-host runs: add --distributed"),
])
def test_distributed_flags_bad_input(capsys, flags, message):
    assert main(["train", *flags]) == 2
    assert message in capsys.readouterr().err


def slurm_env(job_port: int, ntasks: int, procid: int) -> dict:
    """What srun sets for task `procid` on one node; jax derives the coordinator port from the job id."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("SLURM_")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               SLURM_JOB_ID=str(job_port - 61440), SLURM_NTASKS=str(ntasks), SLURM_PROCID=str(procid),
               SLURM_LOCALID=str(procid), SLURM_STEP_NODELIST="127.0.0.1", SLURM_STEP_NUM_NODES="1")
    return env


def slurm_port() -> PortReservation:
    """A port held in jax's SLURM range [61440, 65535] (see PortReservation)."""
    start = 61440 + os.getpid() % 4000
    return PortReservation(range(start, 65536))


@pytest.fixture(scope="module")
def slurm_cache(tmp_path_factory):
    """One compilation cache for both runs of the SLURM test: the second one's process 0 loads the
    programs the first one's compiled (the same config but for which process's clock runs fast)."""
    return str(tmp_path_factory.mktemp("slurm_cache"))


@pytest.mark.parametrize("fast, saved", [(0, [2, 4]), (1, [4])])
def test_two_slurm_tasks_train_through_the_cli_and_save_on_process_0s_clock(tmp_path, slurm_cache, fast, saved):
    """`dit-jax train --distributed` with jax's SLURM detection, and a checkpoint every 60 minutes
    with the save clock of process `fast` alone running a million times as fast (60 minutes in
    3.6 ms, so that process is due at every log step and the other never). A save between the last
    step's comes exactly when process 0 is due: its clock decides, whatever the other host's says."""
    wd, port = str(tmp_path / "slurm"), slurm_port()
    cmd = [sys.executable, "-m", "dit_jax.cli", "train", "--distributed", "--distributed_timeout=120",
           "--local_device_ids=0,1", f"--workdir={wd}", *TINY, "--config.total_steps=4", "--config.log_every=2",
           "--config.checkpoint_every=1000", "--config.checkpoint_every_minutes=60",
           f"--config.compilation_cache_dir={slurm_cache}"]
    procs = [Child(cmd, env={**slurm_env(port.port, 2, i), **({TEST_CLOCK_RATE: "1e6"} if i == fast else {})},
                   cwd=str(tmp_path), holds=[port] if i == 0 else []) for i in range(2)]
    outs = finish_all(procs, timeout=600)
    assert "over 4 devices on 2 host(s)" in outs[0]
    from dit_jax.train.checkpoint import make_manager
    # Step 2 only when process 0's clock said so (broadcast at the log step), step 4 as the last.
    assert make_manager(wd, 3, 1).all_steps() == saved


def test_distributed_timeout_ends_a_lonely_process(tmp_path):
    """Process 0 of 2 with no partner gives up after --distributed_timeout, not jax's 300 s default."""
    cmd = [sys.executable, "-m", "dit_jax.cli", "train", "--distributed", "--distributed_timeout=5",
           f"--workdir={tmp_path / 'w'}", *TINY]
    t0 = time.time()
    with slurm_port() as port:
        res = subprocess.run(cmd, env=slurm_env(port.port, 2, 0), cwd=str(tmp_path), capture_output=True,
                             text=True, timeout=240)
    # jax aborts the process (SIGABRT) from C++: an "other failure" to a retry loop, never 0/2/3/75.
    assert res.returncode not in (0, 2, 3, 75), res.stderr[-3000:]
    assert "waiting up to 5 s" in res.stderr and "DEADLINE_EXCEEDED" in res.stderr
    assert time.time() - t0 < 120


def test_metrics_log_writes_tensorboard_events_without_importing_torch(tmp_path):
    """tensorboardX would import torch (installed here for the converters): 2-3 s at every start."""
    script = ("import sys; from dit_jax.train.metrics_log import MetricsLog; log = MetricsLog(sys.argv[1]); "
              "log.scalars(7, {'eval/fid': 3.5}); log.close(); print('torch imported:', 'torch' in sys.modules); "
              "import torch; print('then torch', torch.zeros(2).shape[0])")  # still importable afterwards
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torch imported: False" in res.stdout and "then torch 2" in res.stdout
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"eval/fid" in events[0].read_bytes()
