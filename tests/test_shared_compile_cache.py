"""The suite's shared compilation cache (tests/shared_cache_site/sitecustomize.py): in a two-process
job on fake CPU devices, process 1 reads the programs process 0 wrote, and gets process 0's results;
without the site hook (the control) it reads none of them."""

import json
import os
import sys

import pytest

from conftest import SHARED_CACHE_SITE, Child, PortReservation, finish_all

pytestmark = pytest.mark.slow  # starts jax processes

# One job of 2 processes x 2 CPU devices: a program over all 4 devices, and one on this process's own
# device. It prints this process's persistent-cache hits and both results.
JOB = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from jax._src import monitoring
events = []
monitoring.register_event_listener(lambda event, **kw: events.append(event))
jax.config.update("jax_compilation_cache_dir", sys.argv[3])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
pid = int(sys.argv[1])
jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", 2, pid, local_device_ids=[0, 1])
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
x = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")),
                                           np.arange(8, dtype=np.float32).reshape(2, 4) + 10 * pid)
total = jax.jit(lambda x: jnp.sin(x).sum() * 3.0)(x)
local = jax.jit(lambda y: jnp.cos(y) * 7.0, device=jax.local_devices()[1])(jnp.arange(3.0) + pid)
print("REPORT " + json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits"),
                              "total": float(total), "local": np.asarray(local).tolist()}), flush=True)
"""


def _job(cache, shared=(True, True)):
    """Each process's report, process 1 first started with or without the hook as `shared` says."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DIT_JAX_TEST_SHARED_CACHE")}
    port = PortReservation()
    children = [Child([sys.executable, "-c", JOB, str(i), str(port.port), cache], holds=[port] if i == 0 else [],
                      env=dict(env, DIT_JAX_TEST_SHARED_CACHE="1" if shared[i] else "0")) for i in (0, 1)]
    outs = finish_all(children, timeout=120)
    return [json.loads(next(line for line in out.splitlines() if line.startswith("REPORT "))[7:]) for out in outs]


def _results(reports):
    return [{k: v for k, v in r.items() if k != "hits"} for r in reports]


def test_process_1_reads_what_process_0_wrote(tmp_path):
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == SHARED_CACHE_SITE  # what every child inherits
    cache = str(tmp_path / "cache")
    cold = _job(cache)
    assert cold[0]["hits"] == 0 and os.listdir(cache)  # (process 1 may already read what process 0 just wrote)
    warm = _job(cache)
    assert warm[0]["hits"] >= 2 and warm[1]["hits"] == warm[0]["hits"]  # both programs, on both processes
    # The control: process 1 without the hook reads nothing process 0 wrote (jax's own CPU cache key).
    control = _job(cache, shared=(True, False))
    assert control[0]["hits"] == warm[0]["hits"] and control[1]["hits"] == 0
    assert _results(cold) == _results(warm) == _results(control)  # what was read back computes the same
