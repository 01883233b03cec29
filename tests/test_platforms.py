"""No libtpu noise where there is no TPU (dit_jax.platforms), first met as a fault on a new user's first
day. Each test failed before its fix."""

import os

import pytest

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


def test_platforms_are_left_to_jax_wherever_an_accelerator_or_a_choice_exists():
    import fnmatch

    from dit_jax.platforms import chosen_platforms
    nothing = lambda pattern: []  # noqa: E731
    assert chosen_platforms({}, find=nothing) == "cpu"
    assert chosen_platforms({"JAX_PLATFORMS": ""}, find=nothing) == "cpu"  # empty: jax's own choice
    assert chosen_platforms({"JAX_PLATFORMS": "tpu"}, find=nothing) is None  # the user's choice is kept
    assert chosen_platforms({"TPU_WORKER_ID": "0"}, find=nothing) is None  # a TPU host
    for device in ("/dev/accel0", "/dev/vfio/0", "/dev/nvidia0", "/dev/kfd"):
        def present(pattern, device=device):
            return [device] if fnmatch.fnmatch(device, pattern) else []
        assert chosen_platforms({}, find=present) is None, device


@pytest.mark.slow
def test_no_libtpu_noise_on_a_host_without_a_tpu(tmp_path):
    import glob
    import importlib.util
    import subprocess
    import sys

    if any(glob.glob(p) for p in ("/dev/accel*", "/dev/vfio/*", "/dev/nvidia*", "/dev/kfd")) or any(
            os.environ.get(k) for k in ("TPU_NAME", "TPU_WORKER_ID", "TPU_ACCELERATOR_TYPE")):
        pytest.skip("this host has an accelerator")
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("no libtpu here: nothing would make the noise")
    # A command that starts jax's backends (and nothing else): `models` with its work replaced. The
    # noise comes and goes (libtpu stays silent while another process holds /tmp/libtpu_lockfile),
    # so the test asks jax whether it tried the TPU backend at all: its failed backends are recorded.
    script = ("import jax, sys\nfrom jax._src import xla_bridge\nfrom dit_jax import cli\nfrom dit_jax.cli import models\n"
              "models.run = lambda args: print('devices', [d.platform for d in jax.devices()],\n"
              "                                'tried', sorted(xla_bridge._backend_errors)) or 0\n"
              "sys.exit(cli.main(['models']))\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "devices ['cpu']" in res.stdout, res.stdout + res.stderr
    assert "'tpu'" not in res.stdout, res.stdout  # the TPU backend was never started
    assert "TPU" not in res.stderr and "libtpu" not in res.stderr and "E0000" not in res.stderr, res.stderr
