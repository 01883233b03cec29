"""The launch recipes in tools/launch/: each dry run prints every command it would run, and the
restart loops act on `dit-jax train`'s exit codes."""

import os
import re
import shlex
import subprocess

import pytest

from dit_jax import exit_codes

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(script, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full.update({"DRY_RUN": "1", "CHECK": "0", **env})  # the check before launch: its own tests below
    res = subprocess.run(["bash", os.path.join(ROOT, "tools", "launch", script)], env=full, capture_output=True,
                         text=True, timeout=300)
    commands = [shlex.split(line[2:]) for line in (res.stdout + res.stderr).splitlines() if line.startswith("+ ")]
    return res, commands


TPU = dict(QR="dit", ZONE="us-east5-a", ACCELERATOR="v5p-64", WORKDIR="gs://bucket/run",
           TRAIN_FLAGS="--config.batch_size=256")


def test_tpu_pod_recipe_restarts_on_preemption_and_crash_and_stops_when_done():
    res, cmds = dry_run("tpu_pod.sh", DRY_RUN_EXIT_CODES="75 1 0", **TPU)
    assert res.returncode == 0, res.stderr
    creates = [c for c in cmds if c[3:5] == ["queued-resources", "create"]]
    assert len(creates) == 2 and "--spot" in creates[0] and ["--node-id", "dit"] == creates[0][-3:-1]
    assert creates[0][creates[0].index("--accelerator-type") + 1] == "v5p-64"
    assert sum(c[3:5] == ["queued-resources", "delete"] for c in cmds) == 1   # the preempted slice, once
    # Every state query is shown too (it was once hidden with gcloud's stderr): before each creation
    # and each wait, and after the preemption.
    assert sum(c[3:5] == ["queued-resources", "describe"] for c in cmds) >= 4
    runs = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"] and "--worker=all" in c and "train" in c[-1]]
    assert len(runs) == 3  # first try, after the preemption, after the crash
    assert runs[0][-1].startswith("cd ~/dit-jax && .venv/bin/dit-jax train --distributed "
                                  "--config=configs/dit.py:XL/2 --workdir=gs://bucket/run "
                                  "--config.compilation_cache_dir=gs://bucket/run/jax_cache --config.batch_size=256")
    installs = [c for c in cmds if "install" in c[-1]]
    assert len(installs) == 2 and "pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'" in installs[0][-1]
    assert "preempted (exit 75)" in res.stdout and "retry 1 of 3" in res.stdout and "finished" in res.stdout


def test_tpu_pod_recipe_stops_on_bad_input_and_divergence():
    for code in (exit_codes.BAD_INPUT, exit_codes.DIVERGED):
        res, cmds = dry_run("tpu_pod.sh", DRY_RUN_EXIT_CODES=f"{code} 0", **TPU)
        assert res.returncode == code and f"exit {code}" in res.stderr
        assert len([c for c in cmds if "train" in c[-1]]) == 1


def test_tpu_multislice_recipe_uses_all_nodes():
    res, cmds = dry_run("tpu_pod.sh", NUM_SLICES="2", SPOT="0", **TPU)
    assert res.returncode == 0, res.stderr
    create = next(c for c in cmds if c[3:5] == ["queued-resources", "create"])
    assert ["--node-count", "2", "--node-prefix", "dit"] == create[-4:] and "--spot" not in create
    run = next(c for c in cmds if "train" in c[-1] and "--worker=all" in c)
    assert run[3:6] == ["queued-resources", "ssh", "dit"] and "--node=all" in run


def test_slurm_recipe_one_task_per_gpu_and_per_node_requeues_on_75():
    env = dict(WORKDIR="/shared/run", SLURM_JOB_ID="42", GPUS="4", DRY_RUN_EXIT_CODES="75")
    res, cmds = dry_run("slurm_gpu.sbatch", **env)
    assert res.returncode == exit_codes.PREEMPTED
    assert cmds[0] == ["srun", "--kill-on-bad-exit=1", ".venv/bin/dit-jax", "train", "--distributed",
                       "--config=configs/dit.py:XL/2", "--workdir=/shared/run",
                       "--config.compilation_cache_dir=/shared/run/jax_cache"]  # shared by the nodes, not local
    assert cmds[1] == ["scontrol", "requeue", "42"]
    res, cmds = dry_run("slurm_gpu.sbatch", TASKS="per-node", **env)
    assert cmds[0][:3] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
    assert cmds[0][-1] == "--local_device_ids=0,1,2,3"
    for code in ("0", "2", "3"):
        res, cmds = dry_run("slurm_gpu.sbatch", **{**env, "DRY_RUN_EXIT_CODES": code})
        assert res.returncode == int(code) and len(cmds) == 1  # no requeue


def test_slurm_script_asks_for_requeue_and_a_sigterm_before_the_time_limit():
    with open(os.path.join(ROOT, "tools", "launch", "slurm_gpu.sbatch")) as f:
        directives = [line.split()[1] for line in f if line.startswith("#SBATCH")]
    assert "--requeue" in directives and "--signal=TERM@120" in directives


def test_xpk_recipe_builds_pushes_and_creates_the_workload():
    res, cmds = dry_run("xpk.sh", CLUSTER="c", PROJECT="p", ZONE="z", TPU_TYPE="v5p-256", WORKDIR="gs://b/r",
                        IMAGE="img", NUM_SLICES="2")
    assert res.returncode == 0, res.stderr
    assert cmds[0] == ["docker", "build", "--build-arg", "JAX_EXTRA=tpu", "-t", "img", "."]
    assert cmds[1] == ["docker", "push", "img"]
    create = cmds[2]
    assert create[:3] == ["xpk", "workload", "create"]
    assert create[create.index("--num-slices") + 1] == "2" and create[create.index("--tpu-type") + 1] == "v5p-256"
    assert create[-1] == ("dit-jax train --distributed --config=configs/dit.py:XL/2 --workdir=gs://b/r "
                          "--config.compilation_cache_dir=gs://b/r/jax_cache")


def test_dockerfile_installs_what_the_readme_installs():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        docker = f.read()
    readme = ""
    for page in ("README.md", "docs/cluster.md"):  # the set-up, and the install on every host of a cluster
        with open(os.path.join(ROOT, page)) as f:
            readme += f.read()
    installs = re.findall(r"\.venv/bin/pip install [^;\n]+?(?=;|\n| fi)", docker)
    # pip first: the pip of a Python 3.12.1 venv cannot resolve jax[tpu] (README, set-up)
    assert installs == [".venv/bin/pip install -U pip \\", '.venv/bin/pip install -e . "jax[$JAX_EXTRA]"',
                        ".venv/bin/pip install -e ."]
    for extra in ("tpu", "cuda12"):
        assert f".venv/bin/pip install -U pip && .venv/bin/pip install -e . 'jax[{extra}]'" in readme
    assert "python3.12 -m venv .venv && .venv/bin/pip install -U pip" in readme
    assert "FROM python:3.12" in docker and "python3.12 -m venv .venv" in readme


CHECKED = {  # each recipe with the paper's config, as its header shows it (VAE and DATA_DIR given)
    "tpu_pod.sh": dict(TPU, TRAIN_FLAGS=""),
    "xpk.sh": dict(CLUSTER="c", PROJECT="p", ZONE="z", TPU_TYPE="v5p-256", WORKDIR="gs://b/run", IMAGE="img"),
    "slurm_gpu.sbatch": dict(WORKDIR="/shared/run", SLURM_JOB_ID="42", SLURM_NNODES="4", GPUS="8"),
}
DEVICES = {"tpu_pod.sh": 32, "xpk.sh": 128, "slurm_gpu.sbatch": 32}


@pytest.mark.parametrize("script", sorted(CHECKED))
def test_recipe_checks_the_run_here_before_launching_and_stops_on_a_bad_config(script):
    env = dict(CHECKED[script], CHECK="1", DATA_DIR="/data/tfds")
    res, cmds = dry_run(script, **env, VAE="gs://b/sd-vae-ft-ema")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"--devices={DEVICES[script]} --config=configs/dit.py:XL/2" in res.stderr
    assert "dry run: every check passed" not in res.stdout  # the check's report goes to stderr, the plan with it
    assert f"over {DEVICES[script]} devices" in res.stderr and cmds
    train = [c for c in cmds if "train" in " ".join(c)]
    assert train and all("--config.data.vae=gs://b/sd-vae-ft-ema" in " ".join(c) for c in train)
    # The negative control: without VAE the paper's config cannot run, and nothing is launched.
    res, cmds = dry_run(script, **env)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "data.latents='encode' needs the VAE" in res.stderr
    assert "nothing was launched" in res.stderr and cmds == []
