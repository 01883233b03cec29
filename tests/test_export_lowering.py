"""The sharded train step and the sampler lower for GPUs and TPUs (jax.export, from this CPU host):
an op that cannot lower for a platform fails here, not on the cluster."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

TESTS = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import flax.linen as nn, jax, jax.numpy as jnp
from jax import export
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from dit_jax.diffusion.gaussian import create_diffusion
from dit_jax.parallel.sharding import LOGICAL_RULES
from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler
from dit_jax.train.programs import abstract_batch, build_train_step
from dit_jax.run import make_run
from dit_jax.configs.base import to_dit_config

platforms = ("cuda", "tpu")
config = tiny_config(**{{"mesh.data": 2, "mesh.fsdp": 4}})
run = make_run(config)
program = build_train_step(run)
mesh = run.mesh
args = (program.abstract_state, abstract_batch(run), None)
with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    exported_step = export.export(program.step, platforms=platforms)(*args)

model_cfg = to_dit_config(config.model)
sampler = make_sampler(model_cfg, run.objective, SamplerSettings(steps="4", cfg_scale=1.5))
params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())),
                      args[0].ema_params)
batch = NamedSharding(mesh, P(("data", "fsdp")))
labels = jax.ShapeDtypeStruct((16,), jnp.int32, sharding=batch)
keys = jax.ShapeDtypeStruct((16, 2), jnp.uint32, sharding=batch)  # one raw key per sample
exported_sampler = export.export(sampler, platforms=platforms)(params, labels, keys)

def summary(e):
    text = e.mlir_module()
    return {{"platforms": list(e.platforms), "devices": e.nr_devices, "bytes": len(e.mlir_module_serialized),
            "sharded_inputs": sum(not s.is_fully_replicated for s in e.in_shardings_jax(mesh)),
            "donated": text.count("tf.aliasing_output") + text.count("jax.buffer_donor")}}
print("RESULT", json.dumps({{"step": summary(exported_step), "sampler": summary(exported_sampler)}}))
"""


def test_sharded_train_step_and_sampler_lower_for_cuda_and_tpu():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=TESTS)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(next(s for s in res.stdout.splitlines() if s.startswith("RESULT "))[len("RESULT "):])
    for name in ("step", "sampler"):
        assert out[name]["platforms"] == ["cuda", "tpu"] and out[name]["devices"] == 8, out
        assert out[name]["sharded_inputs"] > 0 and out[name]["bytes"] > 0, out
    assert out["step"]["donated"] > 0, out  # the state's buffers are reused on the device
