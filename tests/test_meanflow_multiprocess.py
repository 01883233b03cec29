"""MeanFlow on two local processes (jax.distributed, 2 CPU devices each, mesh data 2 x fsdp 2) with sample
grids and the digits evaluation on, against one process over the same 4 devices (test_multiprocess's
harness): the same losses, grids and scores."""

import os

import pytest

from helpers import WITH_SAMPLING, finish, losses, scores, start

pytestmark = pytest.mark.slow

MEANFLOW = {"objective": "meanflow", "model.learn_sigma": False, "model.second_time_input": True, "optim.b2": 0.95,
            **WITH_SAMPLING, "sample.sampler": "meanflow", "sample.steps": "1", "evals.digits.sampler": "meanflow",
            "evals.digits.steps": "2"}


def test_meanflow_on_two_processes_trains_samples_and_evaluates_as_one(tmp_path):
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    outs = finish(start(two, MEANFLOW) + start(one, MEANFLOW, processes=1))
    assert "over 4 devices on 2 host(s)" in outs[0]
    a, b = losses(two), losses(one)
    assert sorted(a) == list(range(1, 7)) and all(a[s] == pytest.approx(b[s], rel=1e-5) for s in a)
    for step in (3, 6):
        name = os.path.join("samples", f"step_{step:07d}.png")
        with open(os.path.join(two, name), "rb") as f, open(os.path.join(one, name), "rb") as g:
            assert f.read() == g.read()
    assert scores(two) == scores(one)
    assert "1 meanflow steps" in outs[0] or "2 meanflow steps" in outs[0]
