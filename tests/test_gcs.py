"""Run directories in a bucket: `--workdir gs://...` trains, evaluates, samples and resumes through a
GCS-protocol emulator on 127.0.0.1 (the `gcs_bucket` fixture); training data in a bucket is refused
at once, since ArrayRecord reads local files only."""

import io
import json
import os

import numpy as np
import pytest

from conftest import gcs_objects
from dit_jax.cli import main
from helpers import DEMO, tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


def _local_gs_dirs(*roots):
    """Directories or files named like a URI's first component (`gs:`) under `roots`."""
    return [os.path.join(r, n) for root in roots for r, dirs, files in os.walk(root) for n in dirs + files
            if n.startswith("gs:")]


def test_training_in_a_bucket_writes_everything_there_and_resumes(gcs_bucket, tmp_path, monkeypatch, capsys):
    import jax
    from PIL import Image

    from dit_jax import storage
    from dit_jax.train.checkpoint import load_ema
    from dit_jax.train.loop import train_and_evaluate

    bucket, url = gcs_bucket
    monkeypatch.chdir(tmp_path)  # a URI taken for a local path would land here as ./gs:/...
    workdir = f"gs://{bucket}/runs/demo"
    c = tiny_config(**{"sample.every": 3, "sample.num": 4, "sample.steps": "2", "evals.digits.kind": "digits",
                       "evals.digits.every": 3, "evals.digits.num_samples": 20, "evals.digits.steps": "5"})
    train_and_evaluate(c, workdir, stop_after=3)  # stops as a crash would, after the step-3 checkpoint
    first = set(gcs_objects(url, bucket, "runs/demo/"))
    assert any(n.startswith("runs/demo/checkpoints/3/") for n in first)
    assert "runs/demo/samples/step_0000003.png" in first
    assert "eval_scores.json" not in {n.rsplit("/", 1)[-1] for n in first}  # only the final evaluation writes it
    capsys.readouterr()

    result = train_and_evaluate(c, workdir)
    assert "resumed from step 3" in capsys.readouterr().out
    names = set(gcs_objects(url, bucket, "runs/demo/"))
    for name in ("metrics.jsonl", "samples/step_0000003.png", "samples/step_0000006.png", "eval_scores.json",
                 "demo_scores.json"):
        assert f"runs/demo/{name}" in names, name
    assert any(n.startswith("runs/demo/checkpoints/6/") for n in names)
    events = [n for n in names if n.startswith("runs/demo/tensorboard/events.out.tfevents.")]
    assert len(events) == 2  # one event file per process start, both copied up

    rows = [json.loads(line) for line in storage.read_bytes(f"{workdir}/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]  # the resumed run appended to the first
    assert [r["step"] for r in rows if "eval/digits/frechet_distance" in r] == [3]
    scores = json.loads(storage.read_bytes(f"{workdir}/eval_scores.json"))
    assert scores["eval/digits/num_samples"] == 20 and scores == {k: result[k] for k in scores}
    with Image.open(io.BytesIO(storage.read_bytes(f"{workdir}/samples/step_0000006.png"))) as grid:
        assert grid.format == "PNG" and grid.width > 0
    ema, _, step = load_ema(workdir)
    assert step == 6 and all(np.isfinite(x).all() for x in jax.tree.leaves(ema))

    assert not _local_gs_dirs(str(tmp_path)) and not os.path.exists("/tmp/gs:")


def test_weights_directory_in_a_bucket(gcs_bucket):
    import jax

    from dit_jax.models.dit import DiT, DiTConfig
    from dit_jax.weights import load_weights, save_weights

    bucket, url = gcs_bucket
    cfg = DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    params = DiT(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1)), np.zeros(1), np.zeros(1, int))["params"]
    path = save_weights(f"gs://{bucket}/weights/tiny", params, cfg)
    assert path == f"gs://{bucket}/weights/tiny"
    assert any(n.startswith("weights/tiny/params/") for n in gcs_objects(url, bucket, "weights/tiny/"))
    loaded, loaded_cfg = load_weights(path, cfg)
    assert loaded_cfg.hidden_size == 32
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError):
        save_weights(path, params, cfg)


def test_workdir_lock_in_a_bucket(gcs_bucket):
    """In a bucket the lock is an object: a second holder is refused, a released lock is free, and a
    stale one (another host's, heartbeat long past) is renamed away and taken over."""
    from dit_jax import storage
    from dit_jax.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLocked

    bucket, url = gcs_bucket
    wd = f"gs://{bucket}/locked"
    first = WorkdirLock(wd).acquire()
    with pytest.raises(WorkdirLocked, match="is in use by another training"):
        WorkdirLock(wd).acquire()
    first.release()
    assert gcs_objects(url, bucket, "locked/") == []
    stale = {"host": "another-host", "pid": 1, "token": "old", "heartbeat": 0.0}
    storage.write_bytes_atomic(storage.resolve(f"{wd}/{LOCK_NAME}"), json.dumps(stale).encode())
    second = WorkdirLock(wd).acquire()
    assert json.loads(storage.resolve(f"{wd}/{LOCK_NAME}").read_bytes())["token"] == second.token
    assert gcs_objects(url, bucket, "locked/") == [f"locked/{LOCK_NAME}"]  # the stale one is gone
    second.release()


@pytest.mark.parametrize("argv", [
    ["train", f"--config={DEMO}", "--config.data.data_dir=gs://bucket/tfds"],
    ["extract-latents", "--dataset", "imagenet2012", "--data-dir", "gs://bucket/tfds", "--image-size", "256",
     "--vae", "vae", "--out-name", "latents"],
    ["build-dataset", "images", "--name", "x", "--data-dir", "gs://bucket/tfds"],
])
def test_arrayrecord_data_in_a_bucket_fails_at_once(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "vae").mkdir()  # --vae must name a directory: the data_dir is what is refused here
    if argv[0] == "train":
        argv = argv + [f"--workdir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "gs://bucket/tfds" in err and "gcsfuse" in err and "gsutil -m cp -r" in err
    assert sorted(os.listdir(tmp_path)) == ["images", "vae"]  # nothing written, no run directory
