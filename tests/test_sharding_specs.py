"""Sharding checked directly, not through equal losses (which would hold if everything were silently
replicated): on 8 CPU devices, the PartitionSpec of every parameter, AdamW moment and EMA leaf of the
state the training builder places, each leaf's shard shape on a device, and the state's bytes per
device against the fraction the layout promises."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

TESTS = os.path.dirname(os.path.abspath(__file__))

PROBE = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from dit_jax.train.programs import build_train_step
from dit_jax.run import make_run

def leaves(tree):
    return {{jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}}

out = {{}}
for name, changes in json.loads(sys.argv[1]).items():
    run = make_run(tiny_config(**changes), vae=None)
    program = build_train_step(run)
    state = program.init(None)
    specs = {{}}
    for part in ("params", "ema_params", "opt_state"):
        for path, array in leaves(getattr(state, part)).items():
            if array.ndim == 0:
                continue
            shard = array.addressable_shards[0].data
            specs[part + path] = {{"spec": [list(a) if isinstance(a, tuple) else a for a in array.sharding.spec],
                                  "shape": list(array.shape), "shard": list(shard.shape),
                                  "bytes": array.nbytes, "device_bytes": shard.nbytes}}
    out[name] = specs
print("RESULT " + json.dumps(out))
"""

LAYOUTS = {
    "fsdp4": {"mesh.data": 2, "mesh.fsdp": 4},
    "zero1": {"mesh.data": 8, "mesh.shard_optimizer": True},
    "replicated": {"mesh.data": 8},
}


@pytest.fixture(scope="module")
def layouts():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", PROBE.format(tests=TESTS), json.dumps(LAYOUTS)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])


def axes(entry) -> set:
    return {a for dim in entry["spec"] if dim for a in (dim if isinstance(dim, list) else [dim])}


def fraction(specs) -> float:
    return sum(e["device_bytes"] for e in specs.values()) / sum(e["bytes"] for e in specs.values())


def test_fsdp_shards_every_parameter_moment_and_ema_matrix(layouts):
    specs = layouts["fsdp4"]
    # Every weight matrix (kernels, the label table) has an 'embed' axis, which the rules give to fsdp.
    matrices = {k: e for k, e in specs.items() if k.endswith("['kernel']") or k.endswith("['embedding']")}
    assert matrices and all("fsdp" in axes(e) for e in matrices.values()), [
        k for k, e in matrices.items() if "fsdp" not in axes(e)]
    for e in matrices.values():  # each device holds a quarter of the dimension split over fsdp
        dim = next(i for i, d in enumerate(e["spec"]) if d and "fsdp" in (d if isinstance(d, list) else [d]))
        assert e["shard"][dim] * 4 == e["shape"][dim]
    for part in ("params", "ema_params", "opt_state"):  # params, AdamW moments and EMA alike
        assert any(k.startswith(part) for k in matrices), part
    assert not any("data" in axes(e) for e in specs.values())
    assert 0.25 <= fraction(specs) < 0.3, fraction(specs)  # a quarter, plus the small replicated vectors


def test_zero1_splits_moments_and_ema_over_data_and_replicates_params(layouts):
    specs = layouts["zero1"]
    params = {k: e for k, e in specs.items() if k.startswith("params")}
    split = {k: e for k, e in specs.items() if not k.startswith("params") and "data" in axes(e)}
    # (the rules still name fsdp and tensor, of size 1 here: only 'data' splits anything)
    assert params and all("data" not in axes(e) for e in params.values())
    assert all(e["shard"] == e["shape"] for e in params.values())
    divisible = {k: e for k, e in specs.items() if not k.startswith("params") and any(d % 8 == 0 for d in e["shape"])}
    assert split and set(split) == set(divisible), sorted(set(divisible) ^ set(split))
    assert any(k.startswith("ema_params") for k in split) and any(k.startswith("opt_state") for k in split)
    state_fraction = fraction({k: e for k, e in specs.items() if not k.startswith("params")})
    assert 1 / 8 <= state_fraction < 0.15, state_fraction


def test_negative_control_plain_data_parallel_replicates_everything(layouts):
    specs = layouts["replicated"]
    assert all("data" not in axes(e) for e in specs.values()) and fraction(specs) == 1.0
