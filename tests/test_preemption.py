"""The preemption watch agrees across hosts whatever the number of questions each host asks: every
question names its position in the program (a step boundary, or a sampling batch after a step), and
asking again at a position, or at an earlier one, changes nothing."""

import json
import os
import signal
import sys
import time

import pytest
from conftest import Child, PortReservation, finish_all

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: port, process id, directory, batches. Process 1 asks three times per step boundary and once at
# an earlier position; process 0 asks once. Both ask at the same `batches` sampling-batch positions per
# step, of the 2 each step has room for (0: steps without an evaluation, whose positions are skipped).
HOST = r"""
import json, os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
port, pid, directory, batches = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
jax.distributed.initialize("127.0.0.1:" + port, num_processes=2, process_id=pid)
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from dit_jax.train.preemption import Watch
manager = ocp.CheckpointManager(directory)
watch = Watch(manager)
watch.begin(0, 100_000, slots_per_step=2)
asked = 0
for step in range(1, 100_000):
    multihost_utils.sync_global_devices(f"step {step}")  # the hosts run steps together, as training does
    stop = watch.at_step(step)
    asked += 1
    if pid == 1:  # a host-dependent condition: extra questions at positions already asked
        for _ in range(2):
            assert watch.at_step(step) == stop
        watch.within(step - 1, 1)
        asked += 3
    where = (step, 0)
    for batch in range(1, batches + 1):
        if stop:
            break
        asked += 1
        if watch.within(step, batch):
            where = (step, batch)
            break
    if watch.reached:
        print(json.dumps({"process": pid, "stopped_at": where, "questions": asked}), flush=True)
        break
    if step == 3:
        print("running", flush=True)
    time.sleep(0.02)
watch.close()
"""


@pytest.mark.parametrize("signalled, batches", [(0, 2), (1, 2), (1, 0)])
def test_hosts_asking_a_different_number_of_times_stop_together(tmp_path, signalled, batches):
    """batches 0: the sync point (the largest number asked + 1) falls on a skipped position; before
    the watch asked the skipped positions too, no host ever stopped (the deadline failed the test)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = PortReservation()
    procs = [Child([sys.executable, "-c", HOST, str(port.port), str(i), str(tmp_path / "ckpt"), str(batches)],
                   cwd=ROOT, env=env,
                   holds=[port] if i == 0 else []) for i in range(2)]
    try:
        procs[signalled].wait_for("running", 240)  # a deadline on every read: a hang fails the test, not the suite
        time.sleep(0.5)
        procs[signalled].send_signal(signal.SIGTERM)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    outs = finish_all(procs, timeout=120)
    reports = [next(json.loads(x) for x in out.splitlines() if x.startswith("{")) for out in outs]
    assert reports[0]["stopped_at"] == reports[1]["stopped_at"], reports
    assert reports[0]["questions"] != reports[1]["questions"], reports  # they did ask unevenly
