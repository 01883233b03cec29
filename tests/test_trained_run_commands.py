"""What the commands do with one trained run, first met as faults on a new user's first day: export-weights
and convert --force (dit_jax.weights, dit_jax.cli.export_weights, dit_jax.cli.convert), sampling from its
weights or its workdir (dit_jax.cli.sample), and resuming it with another data stream or fewer steps
(train.loop's checks). The run is trained once for all of them (the module fixture `run`), which is why
they share this file. Each test failed before its fix."""

import os

import jax
import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.train.loop import train_and_evaluate
from helpers import one_error_line, snapshot, tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-step training run (never modified by a test: copy it first)."""
    wd = str(tmp_path_factory.mktemp("run") / "run")
    train_and_evaluate(tiny_config(total_steps=2, checkpoint_every=2), wd)
    return wd


@pytest.fixture(scope="module")
def weights(run, tmp_path_factory):
    """The run's EMA weights exported once."""
    out = str(tmp_path_factory.mktemp("weights") / "w")
    assert main(["export-weights", "--workdir", run, "--out", out]) == 0
    return out


# ---------------------------------------------------------------------- 1. --force replaces only weights

@pytest.mark.parametrize("target", ["run", "run/checkpoints", "parent", "a file", "dir with a note"])
def test_export_weights_force_never_deletes_what_is_not_a_weights_dir(run, tmp_path, capsys, target):
    import shutil
    parent = tmp_path / "parent"
    wd = str(parent / "run")
    shutil.copytree(run, wd)
    (parent / "notes.txt").write_text("mine")
    out = {"run": wd, "run/checkpoints": os.path.join(wd, "checkpoints"), "parent": str(parent),
           "a file": str(parent / "notes.txt"), "dir with a note": str(tmp_path / "other")}[target]
    if target == "dir with a note":
        os.makedirs(out)
        open(os.path.join(out, "note.txt"), "w").write("keep me")
    before = snapshot(str(tmp_path))
    assert main(["export-weights", "--workdir", wd, "--out", out, "--force"]) == 2
    one_error_line(capsys, "is a file" if target == "a file" else "--force replaces only a weights directory")
    assert snapshot(str(tmp_path)) == before


def test_export_weights_force_replaces_a_weights_dir_and_a_failed_export_keeps_it(run, weights, tmp_path, capsys,
                                                                                  monkeypatch):
    import shutil

    from dit_jax.weights import load_weights
    out = str(tmp_path / "w")
    shutil.copytree(weights, out)
    assert main(["export-weights", "--workdir", run, "--out", out, "--raw", "--force"]) == 0
    raw, _ = load_weights(out)
    ema, _ = load_weights(weights)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(ema)))
    assert sorted(os.listdir(tmp_path)) == ["w"]  # no temporary sibling left
    # An export that fails while writing leaves the weights that were there, and nothing else.
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    import orbax.checkpoint as ocp
    # The handler fails after Orbax has prepared the directory: the disk filled up while writing.
    monkeypatch.setattr(ocp.CompositeCheckpointHandler, "async_save", broken)
    monkeypatch.setattr(ocp.CompositeCheckpointHandler, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        from dit_jax.weights import save_weights
        save_weights(out, ema, load_weights(weights)[1], force=True)
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["w"]


def test_convert_to_torch_does_not_overwrite_a_file_without_force(weights, tmp_path, capsys):
    pytest.importorskip("torch")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"precious")
    assert main(["convert", "--to-torch", weights, "--out", str(pt)]) == 2
    one_error_line(capsys, "exists", "--force")
    assert pt.read_bytes() == b"precious"
    assert main(["convert", "--to-torch", weights, "--out", str(tmp_path)]) == 2
    one_error_line(capsys, "is a directory")
    assert main(["convert", "--to-torch", weights, "--out", str(pt), "--force"]) == 0
    assert pt.read_bytes() != b"precious" and sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_force_replaces_weights_in_a_bucket_and_refuses_a_run_there(gcs_bucket, weights):
    from conftest import gcs_objects
    from dit_jax import storage
    from dit_jax.weights import load_weights, save_weights
    bucket, url = gcs_bucket
    params, cfg = load_weights(weights)
    path = save_weights(f"gs://{bucket}/force/w", params, cfg)
    zeros = jax.tree.map(np.zeros_like, params)
    save_weights(path, zeros, cfg, force=True)
    assert all((x == 0).all() for x in jax.tree.leaves(load_weights(path)[0]))
    assert not [n for n in gcs_objects(url, bucket, "force/") if not n.startswith("force/w/")]  # no sibling left
    storage.write_bytes_atomic(f"gs://{bucket}/force/run/checkpoints/1/x", b"a checkpoint")
    with pytest.raises(FileExistsError, match="training run"):
        save_weights(f"gs://{bucket}/force/run", params, cfg, force=True)
    assert storage.exists(f"gs://{bucket}/force/run/checkpoints/1/x")


# ------------------------------------------------------------------------------ 2. sampling from the run

def test_sample_cli_refuses_a_held_output_in_one_line(weights, tmp_path, capsys):
    from dit_jax.workdir_lock import WorkdirLock
    out = str(tmp_path / "a.npz")
    held = WorkdirLock(out + ".shards", name="sample.lock").acquire()
    try:
        assert main(["sample", "--weights", weights, "--num-samples", "2", "--steps", "2", "--out", out]) == 2
    finally:
        held.release()
    one_error_line(capsys, "in use by another `dit-jax sample`", "choose another --out")
    assert not os.path.exists(out)


def test_sample_from_a_run_logs_no_orbax_warnings(run, tmp_path, caplog, capsys):
    import logging
    caplog.set_level(logging.WARNING)
    out = str(tmp_path / "g.jpg")
    assert main(["sample", "--workdir", run, "--num", "2", "--steps", "2", "--out", out]) == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    with open(out, "rb") as f:
        assert f.read(3) == b"\xff\xd8\xff"  # .jpg holds JPEG bytes, not PNG's


# ---------------------------------------------------------------- 3. a resume that would change the data

def _copy_run(run, tmp_path):
    import shutil
    wd = str(tmp_path / "run")
    shutil.copytree(run, wd)
    return wd


@pytest.mark.parametrize("change, named", [({"batch_size": 16}, "batch_size: checkpoint 8, config 16"),
                                           ({"data.random_flip": True}, "data.random_flip: checkpoint False"),
                                           ({"data.split": "train[:50%]"}, "data.split: checkpoint 'train'")])
def test_resuming_with_another_data_stream_is_refused_naming_both_values(run, tmp_path, change, named):
    wd = _copy_run(run, tmp_path)
    kept = lambda: {k: v for k, v in snapshot(wd).items() if not k.startswith("tensorboard")}  # noqa: E731
    before = kept()
    with pytest.raises(ValueError, match="accept_data_change=True") as e:
        train_and_evaluate(tiny_config(total_steps=3, checkpoint_every=3, **change), wd)
    assert named in str(e.value) and "\n" not in str(e.value)
    assert kept() == before  # checkpoints and metrics untouched


@pytest.mark.slow
def test_accept_data_change_goes_on_with_the_new_batch_size(run, tmp_path):
    import json
    wd = _copy_run(run, tmp_path)
    train_and_evaluate(tiny_config(total_steps=3, checkpoint_every=3, batch_size=16, accept_data_change=True), wd)
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]


# ------------------------------------------------------------ 4. a finished run resumed with fewer steps

@pytest.mark.slow
def test_resuming_a_finished_run_with_fewer_total_steps_says_so(run, tmp_path, capsys):
    wd = _copy_run(run, tmp_path)
    with pytest.raises(ValueError, match=r"already at step 2, past --config.total_steps=1: nothing to train"):
        train_and_evaluate(tiny_config(total_steps=1, checkpoint_every=1), wd)
    capsys.readouterr()
    train_and_evaluate(tiny_config(total_steps=2, checkpoint_every=2), wd)  # the same total: a no-op, said
    assert "step 2 is total_steps: nothing left to train" in capsys.readouterr().out
