"""A plain (non-editable) install, run from another directory: `dit-jax train` finds the demo config
and `--config configs/dit.py:XL/2`-style names resolve to the packaged configs."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import sys
sys.path.insert(0, {site!r})
import dit_jax
assert dit_jax.__file__.startswith({site!r}), dit_jax.__file__  # the installed copy, not the checkout
from dit_jax.cli import main
sys.exit(main(["train", {config!r}, "--help"] if {config!r} else ["train", "--help"]))
"""


def test_configs_work_from_a_plain_install(tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), ROOT], check=True, timeout=600, capture_output=True)
    assert (site / "dit_jax" / "configs" / "dit.py").is_file()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for config, expected in [("", "name = 'digits'"), ("--config=configs/dit.py:B/4", "name = 'DiT-B/4'")]:
        out = subprocess.run([sys.executable, "-c", PROBE.format(site=str(site), config=config)], cwd=elsewhere,
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert expected in out.stdout, out.stdout[-3000:]
    assert not os.path.exists(elsewhere / "configs")
