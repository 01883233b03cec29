"""One builder per compiled program: the step `dit-jax benchmark` times is the step `dit-jax train` runs,
`dit-jax compile` lowers the same step, the layers hold (no import circles), and the logical-axis rules
cover every axis the model names."""

import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from dit_jax.train import programs
from dit_jax.train.loop import train_and_evaluate
from helpers import tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def training_step_text(config, workdir) -> str:
    """The HLO of the train step as the training loop calls it (its real arguments, first step)."""
    seen = []
    build = programs.build_train_step

    def recording(run):
        program = build(run)
        step = program.step

        def call(state, batch, vae_params):
            if not seen:
                seen.append(step.lower(state, batch, vae_params).as_text())
            return step(state, batch, vae_params)
        return programs.TrainProgram(**{**program.__dict__, "step": call})

    import dit_jax.train.loop as loop
    original = loop.build_train_step
    loop.build_train_step = recording
    try:
        train_and_evaluate(config, workdir, stop_after=1)
    finally:
        loop.build_train_step = original
    return seen[0]


def benchmark_step_text(config) -> str:
    from dit_jax.benchmark.suite import Setting, bench_run, lowered_step, synthetic_batch
    from dit_jax.parallel.mesh import make_mesh_from_config
    mesh = make_mesh_from_config(config.mesh)
    run = bench_run(config, Setting.of(config, mesh.size), mesh)
    _, lowered = lowered_step(run, synthetic_batch(run))
    return lowered.as_text()


def test_benchmark_times_the_step_training_runs(tmp_path):
    config = tiny_config()
    trained = training_step_text(config, str(tmp_path / "run"))
    assert benchmark_step_text(config) == trained
    # Negative control: a config field the old benchmark ignored (the noise schedule) changes the program.
    other = tiny_config(**{"diffusion.noise_schedule": "squaredcos_cap_v2"})
    assert benchmark_step_text(other) != trained


def test_compile_lowers_the_training_step(tmp_path):
    """`dit-jax compile`'s run and the training builder give the same lowered step for a config."""
    from dit_jax.jobs.compile import compile_run
    from dit_jax.parallel.sharding import LOGICAL_RULES
    config = tiny_config()
    run = compile_run(config, jax.devices())
    program = programs.build_train_step(run)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(LOGICAL_RULES):
        compiled_text = program.lower(run).as_text()
    assert compiled_text == training_step_text(config, str(tmp_path / "run"))


def test_logical_rules_cover_every_axis_the_model_names():
    from dit_jax.models.dit import LOGICAL_AXES, abstract_params, dit_config
    from dit_jax.parallel.sharding import LOGICAL_RULES
    assert {name for name, _ in LOGICAL_RULES} == set(LOGICAL_AXES)
    used = set()
    for name in ("S/2", "XL/2"):
        for cfg in (dit_config(name), dit_config(name, scan_blocks=True)):
            boxed = abstract_params(cfg, boxed=True)
            for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
                used.update(n for n in leaf.names if n is not None)
    assert used and used <= set(LOGICAL_AXES), used - set(LOGICAL_AXES)


def lint(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "lint-imports"), "--config",
                           os.path.join(root, "setup.cfg"), "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_layers_have_no_upward_imports(tmp_path):
    if not shutil.which("lint-imports", path=os.path.dirname(sys.executable)):
        pytest.skip("import-linter is not installed (the test extra brings it)")
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout
    # Negative control: one upward import (the model importing the training loop) breaks the contract.
    copy = tmp_path / "tree"
    shutil.copytree(os.path.join(ROOT, "dit_jax"), copy / "dit_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "setup.cfg"), copy / "setup.cfg")
    with open(copy / "dit_jax" / "models" / "layers.py", "a") as f:
        f.write("\n\ndef _upward():\n    from dit_jax.train import loop  # noqa: F401\n")
    broken = lint(str(copy))
    assert broken.returncode != 0 and "dit_jax.models.layers -> dit_jax.train.loop" in broken.stdout
