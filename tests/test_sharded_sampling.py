"""The sampler shards over the batch: 8 CPU devices give the same samples as one."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

SCRIPT = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from dit_jax.diffusion.gaussian import create_diffusion
from dit_jax.models.dit import DiTConfig, init_params
from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler

assert jax.device_count() == 8
cfg = DiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=5)
params = init_params(cfg, jax.random.key(0))
params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape), params)
labels = jnp.arange(16) % 5
run = make_sampler(cfg, create_diffusion(""), SamplerSettings(steps="6", cfg_scale=1.5))
single = np.asarray(run(params, labels, jax.random.key(3)))
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sharded_labels = jax.device_put(labels, NamedSharding(mesh, P("data")))
replicated = jax.device_put(params, NamedSharding(mesh, P()))
out = run(replicated, sharded_labels, jax.random.key(3))
assert len(out.sharding.device_set) == 8, out.sharding
# Same noise, same math; only the float reduction order of the per-device programs may differ.
rel = float(np.abs(np.asarray(out) - single).max() / np.abs(single).max())
assert rel < 1e-5, rel
print("max diff", rel)
"""


def test_sampler_on_8_device_mesh_matches_one_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "max diff" in res.stdout
