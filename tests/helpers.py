"""Helpers that several test files share: a tiny demo config, reading a run's losses and scores,
training runs in child processes (8 CPU devices; 2 jax.distributed processes), a tiny DiT for the
samplers, the one-line error check, and the exact few-sample Frechet distance.

A test file imports these from here, never from another test file (whose tests pytest would then
collect twice, and whose module-level fixtures and marks would leak). Heavy imports stay inside the
functions, so that importing this module costs nothing.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import Child, PortReservation, finish_all
from dit_jax.models.dit import DiTConfig

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
DEMO = os.path.join(ROOT, "configs", "demo.py")


# --- a tiny training run --------------------------------------------------------------------------

def tiny_config(**changes):
    """The demo, shrunk so that a few steps take seconds."""
    from dit_jax.configs.files import load_config
    c = load_config(DEMO)
    c.model.update(hidden_size=32, depth=2, num_heads=2)
    c.update(batch_size=8, total_steps=6, log_every=1, checkpoint_every=3)
    c.sample.every = 0
    c.evals.digits.kind = ""
    c.optim.warmup_steps = 0
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def losses(workdir):
    """Loss per step from metrics.jsonl (evaluation rows have none); a re-run step's later entry wins."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f) if "loss" in row}


def final_params(workdir):
    from dit_jax.train.checkpoint import load_ema
    return load_ema(workdir)


def scores(workdir):
    """(the final scores of eval_scores.json, less their timing and the file's step and evaluator
    descriptions, {step: the digits Frechet distance logged at that step})."""
    with open(os.path.join(workdir, "eval_scores.json")) as f:
        final = json.load(f)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        periodic = {row["step"]: row["eval/digits/frechet_distance"] for row in map(json.loads, f)
                    if "eval/digits/frechet_distance" in row}
    return {k: v for k, v in final.items() if k.startswith("eval/") and not k.endswith("/seconds")}, periodic


def same_losses(a, b):
    """The losses of every step, equal up to the reduction order of cross-process collectives (a
    step on another batch differs by far more)."""
    a, b = losses(a), losses(b)
    return sorted(a) == sorted(b) and all(a[s] == pytest.approx(b[s], rel=1e-5) for s in a)


def env_without_xla_flags():
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


# --- training in child processes ------------------------------------------------------------------

RUN_8_DEVICES = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from dit_jax.train.loop import train_and_evaluate
changes = json.loads(sys.argv[2])
stop = changes.pop("_stop_after", None)
train_and_evaluate(tiny_config(**changes), sys.argv[1], stop_after=stop)
"""


def run_8_devices(workdir, **changes):
    """tiny_config(**changes) trained in `workdir` by a process with 8 CPU devices (`_stop_after=N`: stop as a crash)."""
    script = RUN_8_DEVICES.format(tests=TESTS)
    res = subprocess.run([sys.executable, "-c", script, workdir, json.dumps(changes)], capture_output=True,
                         text=True, env=env_without_xla_flags(), timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


# argv: port ("-" for one process), process id, workdir, JSON config changes, JSON stop_after.
# Every process, not only process 0 (the only one that prints the run's log), reports what it
# computed: "SCORES {...}" for each evaluation it finished, "RESULT {...}" with the step it stopped at.
TRAIN_PROCESS = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + ("4" if sys.argv[1] == "-" else "2")
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
port, pid, workdir, changes, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
if port != "-":
    jax.distributed.initialize("127.0.0.1:" + port, num_processes=2, process_id=pid)
assert jax.device_count() == 4
sys.path.insert(0, {tests!r})
from helpers import tiny_config
import dit_jax.train.evaluators as evaluation
from dit_jax.train.loop import Preempted, train_and_evaluate
own_evaluate = evaluation.evaluate
def evaluate(*args, **kwargs):  # this host's scores of each evaluation, as it computed them
    scores = own_evaluate(*args, **kwargs)
    if scores is not None:
        print("SCORES " + json.dumps({{k: v for k, v in scores.items() if not k.endswith("/seconds")}}), flush=True)
    return scores
evaluation.evaluate = evaluate
try:
    last = train_and_evaluate(tiny_config(**{{"mesh.data": 2, "mesh.fsdp": 2, **changes}}), workdir, stop_after=stop)
    result = {{"process": pid, "stopped_at": last["step"], "preempted": False}}
except Preempted as e:
    result = {{"process": pid, "stopped_at": e.args[0], "preempted": True}}
print("RESULT " + json.dumps(result), flush=True)
"""

# Sample grids at steps 3 and 6, the digits evaluation at step 3 and at the end.
WITH_SAMPLING = {"sample.every": 3, "sample.num": 6, "sample.steps": "4", "evals.digits.kind": "digits", "evals.digits.every": 3,
                 "evals.digits.num_samples": 12, "evals.digits.batch_size": 6, "evals.digits.steps": "4"}


def start(workdir, changes=None, stop_after=None, processes=2):
    """tiny_config(mesh 2 x 2, **changes) trained over 4 CPU devices: by 2 jax.distributed processes, or 1."""
    script = TRAIN_PROCESS.format(tests=TESTS)
    port = PortReservation() if processes == 2 else None
    return [Child([sys.executable, "-c", script, str(port.port) if port else "-", str(i), workdir,
                   json.dumps(changes or {}), json.dumps(stop_after)], env=env_without_xla_flags(), cwd=ROOT,
                  holds=[port] if port and i == 0 else [])
            for i in range(processes)]


def finish(procs, timeout=900):
    return finish_all(procs, timeout)


# --- a tiny DiT for the samplers ------------------------------------------------------------------

TINY = DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=5)


def tiny_params():
    """TINY's parameters, the zero-initialised layers perturbed so that samples depend on them."""
    import jax

    from dit_jax.models.dit import init_params
    params = init_params(TINY, jax.random.key(0))
    return jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape), params)


def run_fn():
    """The jitted uint8 sampler of TINY (4 DDPM steps, cfg 1.5) over every device."""
    import jax

    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler
    from dit_jax.run import config_for_model, make_run
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    by_batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    run = make_run(config_for_model(TINY), vae=None, mesh=make_mesh(devices=jax.devices()))
    return build_sampler(run, SamplerSettings(steps="4", cfg_scale=1.5), sharding=by_batch, uint8=True)


# --- command-line errors and files ----------------------------------------------------------------

def one_error_line(capsys, *needles):
    """The single `error:` line on stderr, checked to contain every needle."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(directory):
    """{relative path: sha256} of every file under `directory`."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


# --- the exact Frechet distance of a few samples --------------------------------------------------

# The tolerance of an FID over fewer samples than features against the exact value below: the
# covariance product is singular, and our FID (as the ADM evaluator and pytorch-fid) then adds 1e-6 to
# both diagonals, which moves it by about 1e-2 at most here (measured 4.2e-3, 4.6e-3 and 9.6e-3).
FEW_SAMPLE_ABS = 5e-2


def few_sample_frechet(features, mu, sigma) -> float:
    """The Frechet distance between N < F feature vectors and N(mu, sigma), exactly, with no square
    root of an F x F matrix (and none of the eps that a singular product needs there): with A the
    centred features, sigma1 = A^T A / (N - 1), and the non-zero eigenvalues of sigma1 @ sigma are
    those of the N x N matrix A sigma A^T / (N - 1), so tr sqrtm(sigma1 @ sigma) is the sum of their
    square roots. Shares no code with dit_jax.metrics."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    a = x - x.mean(0)
    n = len(x)
    eigenvalues = np.linalg.eigvalsh(a @ sigma @ a.T / (n - 1))
    tr_covmean = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = x.mean(0) - mu
    return float(diff @ diff + np.sum(a * a) / (n - 1) + np.trace(sigma) - 2 * tr_covmean)


def reports(out):
    """(the scores of each evaluation, the RESULT line) that one process printed."""
    lines = out.splitlines()
    scores = [json.loads(x[len("SCORES "):]) for x in lines if x.startswith("SCORES ")]
    results = [json.loads(x[len("RESULT "):]) for x in lines if x.startswith("RESULT ")]
    assert len(results) == 1, out[-3000:]
    return scores, results[0]


def every_host_agrees(outs):
    """Each process's own scores and stopping step, equal across processes; process 0's report."""
    (scores0, result0), (scores1, result1) = map(reports, outs)
    assert scores0 == scores1, (scores0, scores1)
    assert (result0["stopped_at"], result0["preempted"]) == (result1["stopped_at"], result1["preempted"]), \
        (result0, result1)
    return scores0, result0


# The same tiny run as tiny_config(), through the CLI.
TINY_FLAGS = ["--config.model.hidden_size=32", "--config.model.depth=2", "--config.model.num_heads=2",
              "--config.batch_size=8", "--config.log_every=1", "--config.checkpoint_every=3",
              "--config.sample.every=0", "--config.evals.digits.kind=", "--config.optim.warmup_steps=0"]


def cli_env():
    """The environment of a `dit-jax` child process: this checkout first on its path."""
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def losing_config(**changes):
    """The tiny run, checkpointing every 2 steps and keeping them all."""
    return tiny_config(**{"total_steps": 10, "checkpoint_every": 2, "keep_checkpoints": 10, **changes})


def flip_block(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        block = f.read(4096)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in block))


def run_script_on_8_devices(script: str, *args: str) -> None:
    """Run `script` (a `python -c` text) in a child process that gives itself 8 CPU devices; fails the
    test with the child's output when it does not exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


# --- `dit-jax` commands on two hosts --------------------------------------------------------------

# What a `python -c` prelude ends with: the command line, as `dit-jax` runs it.
CLI_MAIN = "\nimport sys\nfrom dit_jax.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def cli_on_two_processes(argv, prelude: str = "", devices: int = 2):
    """`dit-jax COMMAND --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=I ARGS...` (argv =
    [COMMAND, *ARGS]) as two processes with `devices` CPU devices each, as the same command typed on two
    hosts. `prelude`: Python that each process runs first (a test's stand-in, said where it is used);
    without one the process is `python -m dit_jax.cli`."""
    port = PortReservation()
    environment = {**env_without_xla_flags(), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                   "JAX_PLATFORMS": "cpu"}
    launch = [sys.executable, "-c", prelude + CLI_MAIN] if prelude else [sys.executable, "-m", "dit_jax.cli"]
    return [Child([*launch, argv[0], f"--coordinator=127.0.0.1:{port.port}", "--num_processes=2",
                   f"--process_id={i}", "--distributed_timeout=120", *argv[1:]], env=environment, cwd=ROOT,
                  holds=[port] if i == 0 else [])
            for i in range(2)]


def rel_err(ours, expected) -> float:
    """Largest absolute difference over the largest |expected|, in float64; both finite, of one shape."""
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(expected)), "non-finite values"
    return float(np.max(np.abs(ours - expected)) / max(float(np.max(np.abs(expected))), 1e-30))


def check_rel(measured: dict, name, ours, expected, tol: float) -> None:
    """A parity row: rel_err within `tol`, and the largest error per name kept in `measured` (printed
    by report_measured)."""
    err = rel_err(ours, expected)
    measured[name] = max(err, measured.get(name, 0.0))
    print(f"{name}: rel err {err:.2e}")
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"


def report_measured(measured: dict) -> None:
    """Print the largest relative errors a parity file measured, by name (shown with `pytest -s`), and
    forget them, so that the next file reports its own."""
    if measured:
        print("\nlargest relative errors measured:")
        for name in sorted(measured):
            print(f"  {name:<62} {measured[name]:.2e}")
    measured.clear()
