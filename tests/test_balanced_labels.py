"""`sample --labels balanced`: exactly N / num_classes per class, labels a function of the sample index
only (the same on any host or device count), recorded as arr_1; bad counts refused with exit 2."""

import os
import sys

import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.exit_codes import BadInput
from dit_jax.sampling.labels import balanced_labels, check_labels, labels_for
from dit_jax.sampling.npz import sample_npz

pytestmark = pytest.mark.slow  # one sampling run in a subprocess with 8 fake devices

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import run_fn, run_script_on_8_devices, tiny_params  # noqa: E402


def shard_labels(mode, n, num_classes, batch_per_device, devices, processes):
    """The labels each process computes for its own rows, reassembled in sample order, as sample_npz's
    shards are: shard s covers indices [s B, (s + 1) B), process p holds its devices' rows of it."""
    batch = batch_per_device * devices
    per_process = batch // processes
    rows = {}
    for s in range(-(-n // batch)):
        idx = np.arange(s * batch, (s + 1) * batch)
        for p in range(processes):
            mine = idx[p * per_process:(p + 1) * per_process]
            for i, label in zip(mine, labels_for(mode, 3, mine, num_classes)):
                rows[int(i)] = int(label)
    return np.asarray([rows[i] for i in range(n)])


def test_counts_and_order():
    labels = balanced_labels(np.arange(1000 * 50), 1000)
    assert np.array_equal(np.bincount(labels, minlength=1000), np.full(1000, 50))
    assert np.array_equal(labels[:1000], np.arange(1000))  # the first num_classes: one of each
    # The random protocol is not balanced (the control: the count check above can fail).
    random = labels_for("random", 0, np.arange(1000 * 50), 1000)
    assert np.bincount(random, minlength=1000).std() > 3


@pytest.mark.parametrize("mode", ["balanced", "random"])
def test_same_labels_on_1_and_2_processes(mode):
    one = shard_labels(mode, 60, 10, batch_per_device=4, devices=8, processes=1)
    two = shard_labels(mode, 60, 10, batch_per_device=4, devices=8, processes=2)
    other_layout = shard_labels(mode, 60, 10, batch_per_device=3, devices=2, processes=2)
    assert np.array_equal(one, two) and np.array_equal(one, other_layout)
    if mode == "balanced":
        assert np.array_equal(np.bincount(one), np.full(10, 6))


def test_bad_counts():
    check_labels("balanced", 50, 5)
    with pytest.raises(BadInput, match="not divisible by the model's 5 classes; use a multiple such as 10 or 15"):
        check_labels("balanced", 12, 5)
    with pytest.raises(BadInput, match="--labels must be one of"):
        check_labels("even", 10, 5)


def test_cli_refuses_uneven_counts(tmp_path, capsys):
    # The demo model has 10 classes: 15 samples cannot be balanced. One line, exit 2, nothing written.
    out = tmp_path / "s.npz"
    code = main(["sample", "--num-samples", "15", "--labels", "balanced", "--steps", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --labels balanced: --num-samples 15 is not divisible") and \
        err.count("\n") == 1
    assert not out.exists()
    code = main(["sample", "--labels", "balanced", "--out", str(tmp_path / "g.png")])
    assert code == 2 and "a grid takes --classes" in capsys.readouterr().err


EIGHT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {tests!r})
import jax
from helpers import run_fn, tiny_params
from dit_jax.sampling.npz import sample_npz
assert jax.device_count() == 8
sample_npz(run_fn(), tiny_params(), 10, 5, 7, sys.argv[1], batch_per_device=1, log=print, labels="balanced")
"""


def test_balanced_npz_on_1_and_8_devices(tmp_path):
    one = str(tmp_path / "one.npz")
    sample_npz(run_fn(), tiny_params(), 10, 5, 7, one, batch_per_device=4, log=lambda s: None, labels="balanced")
    eight = str(tmp_path / "eight.npz")
    run_script_on_8_devices(EIGHT.format(tests=os.path.dirname(os.path.abspath(__file__))), eight)
    with np.load(one) as a, np.load(eight) as b:
        assert np.array_equal(a["arr_1"], np.arange(10) % 5) and np.array_equal(a["arr_1"], a["labels"])
        assert np.array_equal(b["arr_1"], a["arr_1"]) and np.array_equal(a["arr_0"], b["arr_0"])
