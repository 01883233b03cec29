"""Two local processes (jax.distributed on 127.0.0.1, 2 CPU devices each) train one model together,
checkpoint to one directory, and resume exactly."""

import json
import os
import socket
import subprocess
import sys

from test_train import losses

WORKER = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
port, pid, workdir, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
jax.distributed.initialize("127.0.0.1:" + port, num_processes=2, process_id=pid)
assert jax.device_count() == 4 and jax.local_device_count() == 2
sys.path.insert(0, {tests!r})
from test_train import tiny_config
from dit_jax.train.loop import train_and_evaluate
train_and_evaluate(tiny_config(**{{"mesh.data": 2, "mesh.fsdp": 2}}), workdir, stop_after=stop)
print("process", pid, "done")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(workdir, stop_after=None):
    script = WORKER.format(tests=os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", script, port, str(i), workdir, json.dumps(stop_after)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def test_two_processes_train_checkpoint_and_resume(tmp_path):
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    outs = run_two(full)
    assert "over 4 devices on 2 host(s)" in outs[0]
    run_two(resumed, stop_after=4)           # both processes stop after step 4 (checkpoint at 3)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints")))[:1] == ["3"]
    run_two(resumed)                          # both resume from step 3 in the shared directory
    a, b = losses(full), losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(a[s] == b[s] for s in a), (a, b)
