"""`dit-jax sample --guide` on two hosts: the command of docs/evaluation_2025.md (a run guided by its own
earlier checkpoint, balanced labels, the ADM .npz) typed on two jax.distributed processes on 127.0.0.1
(2 CPU devices each) writes what one process writes, and each host's own shards hold its rows of it."""

import io
import json
import os
import re

import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.train.loop import train_and_evaluate
from helpers import cli_on_two_processes, finish_all, tiny_config

pytestmark = pytest.mark.slow  # trains a tiny run, starts two processes

N = 10   # one of each of the demo's 10 classes; 2 shards of 8 on 4 devices (the second one partly padding)
# uint8 samples of the same sampler on 4 devices of 2 hosts and on 1 device: equal to rounding (the
# matrix products are blocked by batch size, so a float32 pixel on the edge of a level may round apart).
TOLERANCE = 1


def _argv(run, out, guide, scale="2"):
    return ["sample", "--workdir", run, "--guide", guide, "--cfg-scale", scale, "--num-samples", str(N),
            "--labels", "balanced", "--batch-per-device", "2", "--steps", "4", "--seed", "7", "--out", out]


def _npz(path):
    with open(path, "rb") as f:
        z = np.load(io.BytesIO(f.read()))
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny demo run, checkpoints at steps 3 and 6: the main model is step 6, the guide step 3."""
    workdir = str(tmp_path_factory.mktemp("autoguided") / "run")
    train_and_evaluate(tiny_config(ema_decay=0.0), workdir)   # EMA = the weights: step 3 is a weaker model
    return workdir


@pytest.fixture(scope="module")
def two_hosts(run, tmp_path_factory):
    """(the .npz, the shard directory, each process's output) of the command on two processes."""
    out = str(tmp_path_factory.mktemp("two") / "auto.npz")
    outs = finish_all(cli_on_two_processes(_argv(run, out, run + ":3")), timeout=300)
    return out, out + ".shards", outs


@pytest.fixture(scope="module")
def one_host(run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one") / "auto.npz")
    assert main(_argv(run, out, run + ":3")) == 0
    return _npz(out)


def test_two_hosts_write_what_one_writes(run, two_hosts, one_host):
    out, shards, outs = two_hosts
    for i, text in enumerate(outs):   # both hosts loaded the same guide, and only process 0 wrote the .npz
        assert f"autoguidance by the EMA weights of {run} at step 3 at scale 2.0" in text, (i, text[-2000:])
    assert f"wrote {out}" in outs[0] and f"wrote {out}" not in outs[1]
    two = _npz(out)
    diff = np.abs(two["arr_0"].astype(int) - one_host["arr_0"].astype(int))
    print(f"\ntwo hosts vs one: max |uint8 difference| {diff.max()}, {int((diff > 0).sum())} of {diff.size} "
          "values differ")
    assert two["arr_0"].shape == one_host["arr_0"].shape == (N, 8, 8, 1)
    assert diff.max() <= TOLERANCE
    np.testing.assert_array_equal(two["arr_1"], np.arange(N) % 10)
    np.testing.assert_array_equal(one_host["arr_1"], two["arr_1"])
    manifest = json.load(open(os.path.join(shards, "manifest.json")))
    assert manifest["guide"] == f"the EMA weights of {run} at step 3" and manifest["process_count"] == 2
    assert manifest["labels"] == "balanced" and "guide_checksums" in manifest


def test_each_host_wrote_its_own_rows(two_hosts, one_host):
    """Every host's shard files (named with the digest of the manifest that host computed, guide
    checksums included, so a host that had loaded another guide would have written other names): its
    rows of each global batch, their balanced labels and their samples, the two hosts' rows disjoint
    and together every sample."""
    _, shards, _ = two_hosts
    digest = None
    held = {0: [], 1: []}
    for name in sorted(os.listdir(shards)):
        m = re.fullmatch(r"shard_(\d{6})_(\d)-of-2\.(\w+)\.npz", name)
        if not m:
            continue
        digest = digest or m.group(3)
        assert m.group(3) == digest, name     # the same manifest on both hosts
        z = _npz(os.path.join(shards, name))
        index = z["index"]
        np.testing.assert_array_equal(z["labels"], index % 10)
        real = index < N   # the last global batch is padded past N (process 1's rows of it are all padding)
        assert np.abs(z["images"][real].astype(int) - one_host["arr_0"][index[real]].astype(int)).max(
            initial=0) <= TOLERANCE
        held[int(m.group(2))].append(index)
    assert len(held[0]) == len(held[1]) == 2   # 2 shards, each written by both hosts
    rows = {p: np.concatenate(v) for p, v in held.items()}
    assert len(rows[0]) == len(rows[1]) == 8 and not set(rows[0]) & set(rows[1])
    assert sorted(np.concatenate([rows[0], rows[1]])) == list(range(16))


def test_negative_control_another_guide_moves_the_samples(run, one_host, tmp_path):
    """The tolerance above is far tighter than what the guide changes: the run guided by its own final
    weights (step 6, the main model: unguided) and by step 3 at another scale differ by far more."""
    for label, argv in (("guide = main model", _argv(run, str(tmp_path / "self.npz"), run)),
                        ("cfg-scale 3", _argv(run, str(tmp_path / "w3.npz"), run + ":3", scale="3"))):
        assert main(argv) == 0
        other = _npz(argv[-1])
        diff = np.abs(other["arr_0"].astype(int) - one_host["arr_0"].astype(int))
        print(f"\n{label}: max |uint8 difference| {diff.max()}, mean {diff.mean():.2f}")
        assert diff.max() > 10 * TOLERANCE


def test_multi_host_flags_of_sample(tmp_path, capsys):
    """sample takes train's multi-host flags for --num-samples; a grid on several hosts, or a flag that
    only means something there without --distributed, is one error line and exit 2 (before jax starts)."""
    for argv, needle in [(["--coordinator", "127.0.0.1:1", "--num_processes", "2", "--process_id", "0",
                           "--out", str(tmp_path / "grid.png")], "a grid is drawn on one host"),
                         (["--num-samples", "10", "--local_device_ids", "0", "--out", str(tmp_path / "s.npz")],
                          "apply to multi-host runs: add --distributed")]:
        capsys.readouterr()
        assert main(["sample", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
