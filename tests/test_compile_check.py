"""`dit-jax compile`: the train step AOT-compiled for a TPU topology from this CPU host (libtpu)."""

import os
import re
import subprocess
import sys

import pytest

from dit_jax.cli import main
from dit_jax.jobs.compile import parse_topology, report

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "configs/demo.py", "--config.model.hidden_size=32", "--config.model.depth=1",
        "--config.model.num_heads=2", "--config.batch_size=8"]


@pytest.mark.parametrize("name, dims, hbm", [
    ("v5p-8", (2, 2, 1), 95), ("v5p-256", (4, 4, 8), 95), ("v4-32", (2, 2, 4), 32), ("v4-128", (4, 4, 4), 32),
    ("v5e-1", (1, 1), 16), ("v5e-8", (2, 4), 16), ("v5e-256", (16, 16), 16), ("v6e-64", (8, 8), 32),
])
def test_topology_names_give_cloud_tpu_slice_shapes(name, dims, hbm):
    t = parse_topology(name)
    assert (t.dims, t.hbm_gib) == (dims, hbm)
    assert t.topology == f"{name.split('-')[0]}:{'x'.join(map(str, dims))}"


@pytest.mark.parametrize("name", ["v5p-12", "v3-8", "v5e-2", "tpu"])
def test_unknown_topology_is_one_clear_error(name, capsys):
    assert main(["compile", "--topology", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "e.g. v5p-256" in err[0], err


def test_verdict_compares_the_peak_with_the_chips_memory():
    result = {"seconds": 1.0, "flops": 2e9, "memory": {"arguments": 2 ** 30, "temporaries": 14 * 2 ** 30,
                                                        "output": 2 ** 30, "aliased": 2 ** 30, "code": 0,
                                                        "peak": 15 * 2 ** 30}}
    assert report(result, 16)[-1] == "verdict: fits (15.00 GiB of 16 GiB HBM per chip)"
    assert report(result, 8)[-1] == "verdict: does not fit (15.00 GiB of 8 GiB HBM per chip)"


def test_without_libtpu_the_command_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # what `import libtpu` meets where it is not installed
    assert main(["compile", "--topology", "v5p-8"] + TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: compiling for a TPU topology needs libtpu on this host: pip install 'dit-jax[tpu]' "
                   "(libtpu; or pip install 'jax[tpu]')"]


def test_two_slice_compile_reports_memory_and_tries_settings_that_fit(tmp_path):
    """A two-slice v5e-4 target, data across DCN; with 1 MiB of HBM nothing fits and remat is tried."""
    cmd = [sys.executable, "-m", "dit_jax.cli", "compile", "--topology", "v5e-4", "--num-slices", "2",
           "--config.mesh.dcn_data=2", "--hbm-gib", str(2 ** -10), "--max-tries", "1"] + TINY
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = res.stdout
    assert res.returncode == 1, out + res.stderr[-3000:]
    assert "target v5e-4 x 2 slice(s): 8 chips (TPU v5 lite, v5e:2x2 per slice)" in out
    assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1}; 2 slices: across DCN data (2 x 4)" in out
    m = re.search(r"per device: arguments ([\d.]+) MiB, temporaries ([\d.]+) MiB, .* peak ([\d.]+) MiB", out)
    assert m and 0 < float(m.group(1)) < float(m.group(3)) and float(m.group(2)) > 0, out
    assert re.search(r"FLOPs per device per step: [\d.]+ GFLOP", out), out
    # Data parallel: the gradients are all-reduced (XLA combines them into few tuple all-reduces, and
    # across two slices adds gathers and scatters of its own).
    m = re.search(r"collectives: (.*)", out)
    assert m and re.search(r"\b[1-9]\d* all-reduce", m.group(1)), out
    assert "verdict: does not fit" in out
    assert re.search(r"try mesh data=-1 fsdp=1 tensor=1, remat=full, scan_blocks=False: peak", out), out
    assert "no setting tried fits" in out


def test_collectives_are_counted_from_the_compiled_text_once_per_async_pair():
    from dit_jax.jobs.compile import collectives
    hlo = """
  %all-gather-start.3 = (f32[4,8]{1,0}, f32[16,8]{1,0}) all-gather-start(f32[4,8]{1,0} %p), dimensions={0}
  %all-gather-done.3 = f32[16,8]{1,0} all-gather-done((f32[4,8]{1,0}, f32[16,8]{1,0}) %all-gather-start.3)
  %reduce-scatter.1 = f32[4,8]{1,0} reduce-scatter(f32[16,8]{1,0} %g), dimensions={0}, to_apply=%add
  %all-reduce.7 = f32[] all-reduce(f32[] %loss), replica_groups={{0,1,2,3}}, to_apply=%add
  %fusion.2 = f32[4,8]{1,0} fusion(f32[4,8]{1,0} %all-gather-done.3), kind=kLoop, calls=%fused_all-reduce
"""
    assert collectives(hlo) == {"all-reduce": 1, "all-gather": 1, "reduce-scatter": 1, "all-to-all": 0,
                                "collective-permute": 0}
