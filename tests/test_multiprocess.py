"""Two local processes (jax.distributed on 127.0.0.1, 2 CPU devices each) as a pod slice would run:
training with sample grids and evaluations on, checkpoints in one directory, resumes on another
number of hosts, preemption of all or one host, and `dit-jax sample --num-samples`. Every 2-process
result is compared with one process over the same 4 devices."""

import json
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest

from conftest import Child, PortReservation, finish_all, gcs_objects
from helpers import (ROOT, TESTS, WITH_SAMPLING, env_without_xla_flags, every_host_agrees, finish, reports, same_losses,
                     scores, start)

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


def download(url, bucket, prefix, local):
    """Copy every object under gs://bucket/prefix/ to `local`, through the emulator's own API (not the
    code under test)."""
    import urllib.parse
    import urllib.request
    names = gcs_objects(url, bucket, prefix + "/")
    for name in names:
        target = os.path.join(local, os.path.relpath(name, prefix))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}/o/{quoted}?alt=media", timeout=60) as r, \
                open(target, "wb") as f:
            shutil.copyfileobj(r, f)
    return names


# tiny_config() as `dit-jax train` flags; with TINY_SAMPLING, the config of the `runs` fixture.
TINY_FLAGS = ["--config.model.hidden_size=32", "--config.model.depth=2", "--config.model.num_heads=2",
              "--config.batch_size=8", "--config.total_steps=6", "--config.log_every=1",
              "--config.checkpoint_every=3", "--config.optim.warmup_steps=0", "--config.mesh.data=2",
              "--config.mesh.fsdp=2"]
TINY_SAMPLING = [f"--config.{k}={v}" for k, v in WITH_SAMPLING.items()]


# `dit-jax train ARGS` (dit_jax.cli.main, the command line's own entry) in a process that, like
# helpers.TRAIN_PROCESS, also reports what this host computed: "SCORES {...}" for each evaluation it
# finished and "RESULT {...}" with the step it stopped at (only process 0 prints the run's log).
CLI_REPORTING = r"""
import json, sys
import dit_jax.train.evaluators as evaluation
import dit_jax.train.loop as loop
own_evaluate, own_train = evaluation.evaluate, loop.train_and_evaluate
def evaluate(*args, **kwargs):
    scores = own_evaluate(*args, **kwargs)
    if scores is not None:
        print("SCORES " + json.dumps({k: v for k, v in scores.items() if not k.endswith("/seconds")}), flush=True)
    return scores
def report(step, preempted):
    import jax
    print("RESULT " + json.dumps({"process": jax.process_index(), "stopped_at": step, "preempted": preempted}),
          flush=True)
def train_and_evaluate(*args, **kwargs):
    try:
        last = own_train(*args, **kwargs)
    except loop.Preempted as e:
        report(e.args[0], True)
        raise
    report(last["step"], False)
    return last
evaluation.evaluate, loop.train_and_evaluate = evaluate, train_and_evaluate
from dit_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_train(workdir, flags, reporting=False):
    """`dit-jax train --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=I` as two processes
    with 2 CPU devices each, as on two hosts; `reporting`: through CLI_REPORTING, so that every host
    reports its own scores and stopping step."""
    port = PortReservation()
    environment = {**env_without_xla_flags(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    entry = ["-c", CLI_REPORTING] if reporting else ["-m", "dit_jax.cli"]
    return [Child([sys.executable, *entry, "train", f"--coordinator=127.0.0.1:{port.port}",
                   "--num_processes=2", f"--process_id={i}", "--distributed_timeout=120", f"--workdir={workdir}",
                   *TINY_FLAGS, *flags], env=environment, cwd=ROOT, holds=[port] if i == 0 else [])
            for i in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gcs_bucket):
    """One 6-step run with grids and evaluations on 2 processes, started as a user starts it on each of
    two hosts (`dit-jax train --coordinator=... --process_id=I`, see cli_train) with its workdir in a
    bucket (a GCS-protocol server on 127.0.0.1), and the same run on 1 process in a local workdir (4
    devices each). The bucket's run is copied down for the comparisons. The 2-process run serves both
    test_two_processes_sample_and_evaluate_as_one and test_the_cli_on_two_processes_samples_and_evaluates_as_one
    (one run instead of two: the same config, once through the command line)."""
    bucket, url = gcs_bucket
    base = tmp_path_factory.mktemp("runs")
    two, one = str(base / "two"), str(base / "one")
    procs = cli_train(f"gs://{bucket}/multiprocess/two", TINY_SAMPLING, reporting=True) + \
        start(one, WITH_SAMPLING, processes=1)
    outs = finish(procs)
    names = download(url, bucket, "multiprocess/two", two)
    return two, one, outs, names


def test_two_processes_sample_and_evaluate_as_one(runs):
    two, one, outs, names = runs
    assert "over 4 devices on 2 host(s)" in outs[0]
    # Everything went to the bucket: checkpoints, metrics, events, grids and scores, nothing local.
    for expected in ("multiprocess/two/checkpoints/6/", "multiprocess/two/metrics.jsonl",
                     "multiprocess/two/tensorboard/", "multiprocess/two/samples/step_0000003.png",
                     "multiprocess/two/eval_scores.json"):
        assert any(n.startswith(expected) for n in names), (expected, names[:20])
    assert not [d for root in (ROOT, os.getcwd()) for d in os.listdir(root) if d.startswith("gs:")]
    for step in (3, 6):  # only process 0 writes, the grids are those of one process
        name = os.path.join("samples", f"step_{step:07d}.png")
        with open(os.path.join(two, name), "rb") as a, open(os.path.join(one, name), "rb") as b:
            assert a.read() == b.read()
    final_two, periodic_two = scores(two)
    final_one, periodic_one = scores(one)
    assert sorted(periodic_two) == [3] and np.isfinite(periodic_two[3])
    assert periodic_two == periodic_one and final_two == final_one
    assert same_losses(two, one)
    # Every host computed the same scores, evaluation by evaluation, and stopped at the last step.
    host_scores, result = every_host_agrees(outs[:2])
    assert [s["eval/digits/frechet_distance"] for s in host_scores] == [periodic_two[3],
                                                                     final_two["eval/digits/frechet_distance"]]
    assert result == {"process": 0, "stopped_at": 6, "preempted": False}
    assert reports(outs[2])[0] == host_scores  # one process over the same 4 devices


def test_resume_two_processes_on_one_and_one_on_two(runs, tmp_path):
    two, one, _, _ = runs
    for source, processes in ((two, 1), (one, 2)):
        wd = str(tmp_path / f"to{processes}")
        shutil.copytree(source, wd)
        shutil.rmtree(os.path.join(wd, "checkpoints", "6"))  # as if stopped after the checkpoint of step 3
        outs = finish(start(wd, WITH_SAMPLING, processes=processes))
        assert "resumed from step 3" in outs[0]
        if processes == 2:
            host_scores, _ = every_host_agrees(outs)
            assert host_scores[-1] == scores(wd)[0]
        assert same_losses(wd, source)  # steps 4-6 saw the same global batches
        assert scores(wd)[0] == pytest.approx(scores(source)[0], rel=1e-4)


def checkpoints(wd):
    return sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())


def test_sigterm_to_one_then_to_all_processes_saves_the_same_step(tmp_path):
    """SIGTERM to one process (a host's maintenance notice), then, after the resume, to all (the
    whole slice): each time every process saves the same step within seconds and exits as preempted."""
    wd = str(tmp_path / "run")
    long_run = {"total_steps": 100_000, "checkpoint_every": 100_000}
    saved = []
    for signalled, after in (("one", "step 3/"), ("all", None)):
        procs = start(wd, long_run)
        seen = 0
        if saved:
            seen = procs[0].wait_for(f"resumed from step {saved[-1]}", 300)
            after = f"step {saved[-1] + 2}/"
        procs[0].wait_for(after, 300, seen)
        t0 = time.time()
        for p in procs if signalled == "all" else procs[1:]:
            p.send_signal(signal.SIGTERM)
        outs = finish(procs, timeout=120)
        assert time.time() - t0 < 60, signalled
        _, result = every_host_agrees(outs)
        step = checkpoints(wd)[-1]
        assert result["preempted"] and result["stopped_at"] == step, (signalled, result, checkpoints(wd))
        assert step >= (saved[-1] + 2 if saved else 3), (signalled, checkpoints(wd))
        assert f"checkpoint saved at step {step}" in outs[0]
        saved.append(step)
    assert checkpoints(wd) == saved  # one save per signal, none in between
    outs = finish(start(wd, long_run, stop_after=1))
    assert f"resumed from step {saved[-1]}" in outs[0]


def test_the_cli_on_two_processes_samples_and_evaluates_as_one(runs):
    """The command a user types on each of two hosts, with sample grids and evaluations on (the `runs`
    fixture's 2-process run): only process 0 speaks, it saves the checkpoints of steps 3 and 6, and its
    grids, losses and scores are those of one process over the same 4 devices (the fixture's 1-process
    run; test_two_processes_sample_and_evaluate_as_one compares them)."""
    two, _, outs, _ = runs
    assert "over 4 devices on 2 host(s)" in outs[0] and "EMA quality" in outs[0]
    assert "EMA quality" not in outs[1] and "step 6/6" not in outs[1]  # process 0 speaks
    assert checkpoints(two) == [3, 6]


def test_sigterm_to_one_process_during_an_evaluation_stops_both_at_that_step(tmp_path):
    """SIGTERM to process 1 while the evaluation after step 2 samples (after the progress line of
    its 8th batch of 32): both processes stop between its sampling batches, save step 2 together and
    exit 75 (`dit-jax train`'s code for preempted)."""
    wd = str(tmp_path / "run")
    procs = cli_train(wd, ["--config.total_steps=100000", "--config.checkpoint_every=100000",
                           "--config.evals.digits.kind=digits", "--config.evals.digits.every=2",
                           "--config.evals.digits.num_samples=128", "--config.evals.digits.batch_size=4",
                           "--config.evals.digits.steps=20"])
    procs[0].wait_for("  digits: 32/128 samples", 600)
    t0 = time.time()
    procs[1].send_signal(signal.SIGTERM)
    outs = finish_all(procs, timeout=120, codes=(75,))
    assert time.time() - t0 < 60
    assert "  digits: 128/128 samples" not in outs[0] and "EMA quality" not in outs[0]  # cut short
    assert "preempted: checkpoint saved at step 2;" in outs[0]
    assert checkpoints(wd) == [2]  # one save, by both processes together (a save is collective)


SAMPLE = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.distributed.initialize("127.0.0.1:" + sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from dit_jax.cli import main
sys.exit(main(sys.argv[3:]))
"""


def test_sample_num_samples_on_two_processes(tmp_path, capsys):
    sys.path.insert(0, TESTS)
    from helpers import tiny_params, TINY

    from dit_jax.cli import main
    from dit_jax.weights import save_weights
    w = save_weights(str(tmp_path / "w"), tiny_params(), TINY)
    out = str(tmp_path / "two.npz")
    args = ["sample", "--weights", w, "--num-samples", "10", "--batch-per-device", "2", "--steps", "3",
            "--seed", "7", "--out", out]
    port = PortReservation()
    finish([Child([sys.executable, "-c", SAMPLE, str(port.port), str(i), *args], env=env_without_xla_flags(), cwd=ROOT,
                  holds=[port] if i == 0 else []) for i in range(2)])
    # Each host wrote the rows it held: 2 shards of 8 x 2 hosts.
    assert sorted(f.split(".")[0] for f in os.listdir(out + ".shards") if f.startswith("shard_")) == [
        f"shard_00000{s}_{p}-of-2" for s in range(2) for p in range(2)]
    one = str(tmp_path / "one.npz")
    assert main(args[:-1] + [one]) == 0
    with np.load(out) as a, np.load(one) as b:
        assert np.array_equal(a["labels"], b["labels"]) and a["arr_0"].shape == (10, 8, 8, 3)
        assert np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int)).max() <= 1
    # Another seed or another device count over the same shards starts over instead of mixing them in.
    capsys.readouterr()
    assert main(args[:-4] + ["--seed", "8", "--out", out]) == 0
    assert "starting over" in capsys.readouterr().out
    fresh = str(tmp_path / "fresh.npz")
    assert main(args[:-4] + ["--seed", "8", "--out", fresh]) == 0
    with np.load(out) as a, np.load(fresh) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
