"""Meshes for pods: slices along the DCN axis, two processes as two slices, ZeRO-1 on 8 devices, and
shardings the mesh does not divide refused (or replicated and logged when asked)."""

import dataclasses
import json
import os
import random
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import Child, PortReservation, finish_all
from helpers import final_params, losses, tiny_config

from dit_jax.parallel.mesh import make_mesh
from dit_jax.train.loop import train_and_evaluate

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

TESTS = os.path.dirname(os.path.abspath(__file__))
# The CLI flags that make the demo the `tiny_config` of test_train.
TINY_FLAGS = ["--config.model.hidden_size=32", "--config.model.depth=2", "--config.model.num_heads=2",
              "--config.batch_size=8", "--config.total_steps=6", "--config.log_every=1",
              "--config.checkpoint_every=3", "--config.sample.every=0", "--config.evals.digits.kind=",
              "--config.optim.warmup_steps=0"]


@dataclasses.dataclass(frozen=True)
class FakeTpuDevice:
    """What mesh_utils reads of a device; CPU devices have no slice_index (jax's own mesh tests fake them too)."""
    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


@pytest.mark.parametrize("dcn_axis", ["data", "fsdp"])
def test_fake_slices_lie_along_the_dcn_axis(dcn_axis):
    devices = [FakeTpuDevice(i, i % 2) for i in range(8)]  # two slices, interleaved in the device list
    random.Random(0).shuffle(devices)
    mesh = make_mesh(data=2, fsdp=2, **{f"dcn_{dcn_axis}": 2}, devices=devices)
    axis = ("data", "fsdp", "tensor").index(dcn_axis)
    assert mesh.devices.shape[axis] == 4
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    # Slices are the outer half of the DCN axis; every other axis stays within one slice.
    expected = (np.arange(4) // 2).reshape([4 if i == axis else 1 for i in range(3)])
    assert np.array_equal(slices, np.broadcast_to(expected, slices.shape)), slices
    with pytest.raises(ValueError, match=r"dcn_data x mesh.dcn_fsdp = 4 needs 4 slices, the devices form 2"):
        make_mesh(data=1, fsdp=2, dcn_data=2, dcn_fsdp=2, devices=devices)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("one"))
    train_and_evaluate(tiny_config(), wd)
    return wd


@pytest.fixture(scope="module")
def one_device_batch_2(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("one2"))
    train_and_evaluate(tiny_config(batch_size=2), wd)
    return wd


# One device per process and one example per host: each host's share of the global batch is then
# the record the one-device run has at the same row (hosts take every other record of one stream).
SLICE = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize("127.0.0.1:" + port, num_processes=2, process_id=pid)
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from dit_jax.train.loop import train_and_evaluate
train_and_evaluate(tiny_config(**{{"batch_size": 2, "mesh.dcn_data": 2, "mesh.data": 1}}), workdir)
"""


def test_two_processes_as_two_slices_train_as_one_device(one_device_batch_2, tmp_path):
    """Each process is one "slice" (process_is_granule: no slice_index on CPU); data crosses DCN."""
    wd = str(tmp_path / "slices")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = PortReservation()
    outs = finish_all([Child([sys.executable, "-c", SLICE.format(tests=TESTS), str(port.port), str(i), wd], env=env,
                             holds=[port] if i == 0 else []) for i in range(2)], timeout=600)
    assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1} over 2 devices on 2 host(s)" in outs[0]
    assert "2 slices: across DCN data (2 x 1)" in outs[0]
    one, two = losses(one_device_batch_2), losses(wd)
    np.testing.assert_allclose([two[s] for s in range(1, 7)], [one[s] for s in range(1, 7)], rtol=2e-5)


EIGHT = r"""
import os, sys, json, contextlib, io
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
from absl import flags
import dit_jax.data.pipeline, dit_jax.train.loop  # their libraries' absl flags stay defined
from dit_jax.cli import main
for argv in json.loads(sys.argv[1]):
    err, before = io.StringIO(), set(flags.FLAGS)
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    for name in set(flags.FLAGS) - before:  # `train` defines its flags on each call
        delattr(flags.FLAGS, name)
    print("RESULT", json.dumps({"rc": rc, "stderr": err.getvalue()}), flush=True)
"""


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """One 8-device process through `dit-jax train`: an fsdp the model does not divide (refused, then
    replicated on request), and ZeRO-1 over 8 data-parallel devices."""
    root = tmp_path_factory.mktemp("eight")
    runs = {
        "refused": ["--config.mesh.fsdp=8", "--config.model.hidden_size=36", "--config.total_steps=1"],
        "replicated": ["--config.mesh.fsdp=8", "--config.model.hidden_size=36", "--config.total_steps=1",
                       "--config.mesh.allow_replicated=True"],
        "zero1": ["--config.mesh.data=8", "--config.mesh.shard_optimizer=True"],
    }
    argvs = [["train", f"--workdir={root / name}"] + TINY_FLAGS + flags for name, flags in runs.items()]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", EIGHT, json.dumps(argvs)], capture_output=True, text=True,
                         env=env, timeout=600, cwd=os.path.dirname(TESTS))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = [json.loads(line[len("RESULT "):]) for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    return {name: {**r, "workdir": str(root / name)} for name, r in zip(runs, results)}, res.stdout


def test_fsdp_the_model_does_not_divide_is_refused(eight_devices):
    runs, _ = eight_devices
    r = runs["refused"]
    assert r["rc"] == 2
    lines = r["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sharding: "), r["stderr"]
    assert "is not divisible by fsdp = 8" in lines[0]
    assert "fsdp sizes that divide every dimension sharded over it: 1, 2, 3, 4, 6 " in lines[0]
    assert "mesh.allow_replicated=True" in lines[0]
    assert not os.path.exists(os.path.join(r["workdir"], "checkpoints", "1"))


def test_allow_replicated_logs_each_replicated_parameter_once(eight_devices):
    runs, stdout = eight_devices
    assert runs["replicated"]["rc"] == 0
    logged = [line.split(": ")[-1] for line in stdout.splitlines()
              if line.startswith("mesh.allow_replicated: replicated (not divisible by fsdp = 8)")]
    names = [entry.split(" ")[0] for entry in logged]
    assert names and len(names) == len(set(names)), logged
    assert any(n.startswith("blocks_0/") for n in names), names


def test_zero1_on_8_devices_trains_as_one_device(eight_devices, one_device):
    runs, stdout = eight_devices
    r = runs["zero1"]
    assert r["rc"] == 0, r["stderr"][-3000:]
    line = next(s for s in stdout.splitlines() if s.startswith("mesh.shard_optimizer: "))
    split, total = map(int, line.split(": ")[1].split(" AdamW")[0].split(" of "))
    assert 0 < split <= total and "split over data (8)" in line, line
    one, eight = losses(one_device), losses(r["workdir"])
    np.testing.assert_allclose([eight[s] for s in range(1, 7)], [one[s] for s in range(1, 7)], rtol=2e-5)
    (a, _, _), (b, _, _) = final_params(one_device), final_params(r["workdir"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)
