"""One writer per sample output (dit_jax.sampling.npz, dit_jax.workdir_lock), first met as faults on a new
user's first day: `dit-jax sample` never overwrites a file it did not make, a second sampler on one output is
refused, and the final assembly never reports output it did not make. Each test failed before its fix."""

import os

import jax
import numpy as np
import pytest

from dit_jax.cli import main
from helpers import one_error_line

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


def test_sample_npz_never_overwrites_a_file_it_did_not_make(tmp_path, capsys):
    ref = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(ref, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=np.zeros(3), sigma=np.eye(3))
    before = ref.read_bytes()
    assert main(["sample", "--num-samples", "4", "--out", str(ref)]) == 2
    one_error_line(capsys, "exists and was not written by `dit-jax sample", "choose another --out")
    assert ref.read_bytes() == before


# -------------------------------------------------------------------------- one writer per sample output

def _fake_run(during=None):
    """A sampler over all devices (no model: each image is filled with its label), calling
    `during(n)` before the n-th batch (1-based), as another process might act meanwhile."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    calls = []

    def run(params, labels, keys, vae_params):
        calls.append(1)
        if during is not None:
            during(len(calls))
        seeds = np.asarray(jax.random.key_data(keys))[:, -1].astype(np.uint8)
        images = np.broadcast_to((np.asarray(labels) * 16 + seeds % 16)[:, None, None, None].astype(np.uint8),
                                 (len(labels), 2, 2, 3))
        return jax.device_put(np.ascontiguousarray(images), sharding)
    return run


PARAMS = {"w": np.ones(3, np.float32)}


def _sample(out, seed=0, during=None, n=20):
    from dit_jax.sampling.npz import sample_npz
    return sample_npz(_fake_run(during), PARAMS, n, 5, seed, out, batch_per_device=4, log=lambda s: None)


def test_a_second_sampler_on_one_output_is_refused_and_the_first_output_is_its_own(tmp_path):
    from dit_jax.workdir_lock import WorkdirLocked
    out, alone = str(tmp_path / "a.npz"), str(tmp_path / "alone.npz")
    _sample(alone)
    refused = []

    def second_writer(n):  # B (seed 1) starts on A's output while A samples its third batch
        if n == 3:
            try:
                _sample(out, seed=1)
            except WorkdirLocked as e:
                refused.append(str(e))
    _sample(out, during=second_writer)
    assert len(refused) == 1 and "in use by another `dit-jax sample`" in refused[0], refused
    with np.load(out) as a, np.load(alone) as b:  # A's output holds A's images only
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])
    assert not os.path.exists(os.path.join(out + ".shards", "sample.lock"))  # released


@pytest.mark.parametrize("interference", ["shard deleted", "manifest rewritten"])
def test_the_assembly_never_reports_output_it_did_not_make(tmp_path, interference):
    """As if a second writer got past the lock (a bucket's lock is best effort): the final assembly
    checks every shard against this run's manifest, and writes nothing when one is not its own."""
    import glob
    import json

    from dit_jax.sampling import npz
    out = str(tmp_path / "a.npz")
    shards = out + ".shards"

    def interfere(n):
        if n != 4:
            return
        if interference == "shard deleted":
            os.remove(sorted(glob.glob(os.path.join(shards, "shard_*")))[0])
        else:  # what a writer with other settings does first
            path = os.path.join(shards, "manifest.json")
            with open(path) as f:
                manifest = json.load(f)
            with open(path, "w") as f:
                json.dump(dict(manifest, seed=1), f)
    with pytest.raises(npz.OutputChanged, match="rerun the same command to resume"):
        _sample(out, during=interfere)
    assert not os.path.exists(out)


def test_one_sampler_per_output_in_a_bucket(gcs_bucket):
    from dit_jax import storage
    from dit_jax.workdir_lock import WorkdirLock, WorkdirLocked
    bucket, _ = gcs_bucket
    out = f"gs://{bucket}/samples/a.npz"
    held = WorkdirLock(out + ".shards", name="sample.lock").acquire()
    with pytest.raises(WorkdirLocked, match="another `dit-jax sample`"):
        _sample(out, n=8)
    held.release()
    _sample(out, n=8)
    assert storage.exists(out) and not storage.exists(out + ".shards/sample.lock")
