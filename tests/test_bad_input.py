"""One clear line for every bad input: `error: ...` naming the problem and the fix, exit code 2, no
traceback, nothing saved lost, and nothing compiled or trained first. Also `dit-jax export-weights`."""

import glob
import os
import shutil

import jax
import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.train.loop import train_and_evaluate
from helpers import ROOT, one_error_line, snapshot, tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-step training run."""
    wd = str(tmp_path_factory.mktemp("run"))
    train_and_evaluate(tiny_config(total_steps=2, checkpoint_every=2), wd)
    return wd


# ------------------------------------------------------------------------------------------ train

BAD_TRAIN_ARGS = [
    (["configs/dit.py:XL/2"], ["--config=configs/dit.py:XL/2"]),                 # forgot --config=
    (["--config=no/such/config.py"], ["'no/such/config.py' not found", "--config="]),
    ([f"--config={ROOT}/configs/dit.py:XXL/2"], ["unknown model name 'XXL/2'"]),  # get_config raises
    (["--config.keep_checkpoints=0"], ["keep_checkpoints must be", ">= 1"]),
    (["--config.mesh.data=0"], ["mesh sizes must be >= 1, or -1"]),
    (["--config.mesh.data=-1", "--config.mesh.fsdp=-1"], ["at most one of mesh"]),
    (["--config.sample.steps=abc"], ["sample.steps", "'abc'"]),
    (["--config.evals.digits.steps=ddim999"], ["evals.digits.steps", "999 steps"]),
    (["--config.sample.sampler=euler"], ["sample.sampler must be one of"]),
    (["--config.sample.cfg_mode=some"], ["sample.cfg_mode must be one of"]),
    (["--config.sample.num=0"], ["sample.num"]),
    (["--config.diffusion.noise_schedule=cosine"], ["diffusion.noise_schedule"]),
    (["--config.diffusion.num_timesteps=1"], ["diffusion.num_timesteps"]),
    (["--config.optim.lr=-0.1"], ["optim.lr must be > 0"]),
    (["--config.optim.b2=1.0"], ["optim.b2 must be in [0, 1)"]),
    (["--config.optim.eps=0.0"], ["optim.eps"]),
    (["--config.optim.warmup_steps=-5"], ["optim.warmup_steps"]),
    (["--config.data.worker_count=-1"], ["data.worker_count"]),
    (["--config.data.channels=2", "--config.model.in_channels=2"], ["data.channels must be 1 or 3"]),
    (["--config.seed=-1"], ["seed must be"]),
    (["--config.evals.digits.batch_size=0"], ["evals.digits.batch_size"]),
    (["--config.peak_tflops_per_device=-1.0"], ["peak_tflops_per_device"]),
]


@pytest.mark.parametrize("args, needles", BAD_TRAIN_ARGS,
                         ids=[" ".join(a).replace(ROOT + "/", "").replace("--config.", "") for a, _ in BAD_TRAIN_ARGS])
def test_bad_train_arguments_fail_in_one_line_and_keep_the_run(run, capsys, args, needles):
    before = snapshot(run)
    # total_steps=1 only so that a missed check fails this test in seconds instead of training the demo.
    assert main(["train", f"--workdir={run}", "--config.total_steps=1", *args]) == 2
    one_error_line(capsys, *needles)
    assert snapshot(run) == before


def test_bad_config_in_a_fresh_workdir_creates_nothing(tmp_path, capsys):
    wd = tmp_path / "new"
    assert main(["train", f"--workdir={wd}", "--config.total_steps=1", "--config.keep_checkpoints=0",
                 "--config.optim.lr=0.0"]) == 2
    one_error_line(capsys, "keep_checkpoints", "optim.lr")  # every problem at once
    assert not wd.exists()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_lists_flags_and_config_fields(capsys, flag):
    assert main(["train", flag, "--config.keep_checkpoints=5"]) == 0
    out = capsys.readouterr().out
    assert "--workdir" in out and "--config" in out and "--config.FIELD=VALUE" in out
    assert "keep_checkpoints = 5" in out and "sample.steps = '100'" in out  # the demo's fields, overrides applied


def test_init_weights_pointing_at_a_training_run(run, tmp_path, capsys):
    for path in (run, os.path.join(run, "checkpoints"), os.path.join(run, "checkpoints", "2")):
        assert main(["train", f"--workdir={tmp_path / 'new'}", f"--config.init_weights={path}"]) == 2
        one_error_line(capsys, "is a training run", f"--workdir {run}", "dit-jax export-weights")
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------- dataset

def test_catalog_dataset_name_suggests_a_name_build_dataset_accepts(tmp_path, capsys):
    import re

    from dit_jax.data.image_folder import check_name
    assert main(["train", f"--workdir={tmp_path / 'wd'}", "--config.data.name=mnist",
                 f"--config.data.data_dir={tmp_path / 'tfds'}"]) == 2
    err = capsys.readouterr().err
    suggested = re.search(r"dit-jax build-dataset SRC_DIR --name (\w+)", err).group(1)
    check_name(suggested)  # build-dataset takes it
    assert f"--config.data.name={suggested}" in err


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from dit_jax.data.digits import ensure_digits
    return ensure_digits(str(tmp_path_factory.mktemp("tfds")))


@pytest.mark.parametrize("damage", ["truncated records", "garbage metadata"])
def test_damaged_cached_dataset_names_the_directory_to_rebuild(digits_dir, tmp_path, capsys, damage):
    data_dir = str(tmp_path / "tfds")
    shutil.copytree(digits_dir, data_dir)
    version = os.path.join(data_dir, "digits", "1.0.0")
    if damage == "truncated records":
        records = glob.glob(os.path.join(version, "*.array_record*"))[0]
        os.truncate(records, os.path.getsize(records) // 2)
    else:
        with open(os.path.join(version, "dataset_info.json"), "w") as f:
            f.write("{not json")
    assert main(["train", f"--workdir={tmp_path / 'wd'}", f"--config.data.data_dir={data_dir}",
                 "--config.total_steps=1"]) == 2
    one_error_line(capsys, "is damaged", f"delete {version}")
    assert not (tmp_path / "wd" / "checkpoints").exists()


def test_build_dataset_where_nothing_decodes_leaves_nothing(tmp_path, capsys):
    for cls in ("a", "b"):
        os.makedirs(tmp_path / "src" / cls)
        (tmp_path / "src" / cls / "x.png").write_bytes(b"not a png")
    data_dir = tmp_path / "tfds"
    assert main(["build-dataset", str(tmp_path / "src"), "--name", "broken", "--data_dir", str(data_dir)]) == 2
    one_error_line(capsys, "none of the 2 image files", "could be decoded")
    assert not data_dir.exists()
    os.makedirs(data_dir / "other")  # an existing data dir keeps what it had, and gets nothing new
    assert main(["build-dataset", str(tmp_path / "src"), "--name", "broken", "--data_dir", str(data_dir)]) == 2
    assert os.listdir(data_dir) == ["other"]


# ----------------------------------------------------------------------------------------- sample

@pytest.mark.parametrize("args, needles", [
    (["--num", "0"], ["--num: must be >= 1"]),
    (["--out", "grid.txt"], ["--out 'grid.txt'", ".png"]),
    (["--num-samples", "-3", "--out", "s.npz"], ["--num-samples"]),
], ids=["num 0", "out grid.txt", "num-samples -3"])
def test_bad_sample_arguments_fail_before_sampling(tmp_path, capsys, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--steps", "2", *args]) == 2
    one_error_line(capsys, *needles)
    assert os.listdir(tmp_path) == []


def test_sample_weights_pointing_at_a_training_run(run, tmp_path, capsys):
    assert main(["sample", "--weights", run, "--out", str(tmp_path / "g.png")]) == 2
    one_error_line(capsys, "is a training run", f"--workdir {run}")


# ---------------------------------------------------------------------------------- export-weights

def test_export_weights_makes_a_weights_dir_of_a_run(run, tmp_path, capsys):
    from dit_jax.train.checkpoint import load_ema
    from dit_jax.weights import load_weights
    pytest.importorskip("torch")
    ema, raw = str(tmp_path / "ema"), str(tmp_path / "raw")
    assert main(["export-weights", "--workdir", run, "--out", ema]) == 0
    assert main(["export-weights", "--workdir", run, "--out", raw, "--raw", "--step", "2"]) == 0
    want_ema, config, _ = load_ema(run)
    want_raw, _, _ = load_ema(run, params_key="params")
    for path, want in ((ema, want_ema), (raw, want_raw)):
        got, got_config = load_weights(path)
        assert got_config.architecture() == config.architecture()
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want_ema), jax.tree.leaves(want_raw)))
    assert main(["convert", "--to-torch", ema, "--out", str(tmp_path / "ema.pt")]) == 0
    capsys.readouterr()
    assert main(["export-weights", "--workdir", run, "--out", str(tmp_path / "x"), "--step", "7"]) == 2
    one_error_line(capsys, "no checkpoint at step 7", "[2]")
    assert main(["export-weights", "--workdir", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    one_error_line(capsys, "not a training run")


# ---------------------------------------------------------------------------------------- convert

@pytest.mark.parametrize("content", [b"hello, this is a text file\n" * 10,
                                     np.random.default_rng(1).integers(1, 127, 4096, dtype=np.uint8).tobytes()],
                         ids=["text", "random bytes"])
def test_convert_a_file_that_is_not_a_torch_checkpoint(tmp_path, capsys, content):
    pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    assert main(["convert", "--from-torch", str(path), "--out", str(tmp_path / "w")]) == 2
    line = one_error_line(capsys, f"{path} is not a PyTorch checkpoint")
    assert "weights_only=False" not in line
    assert not (tmp_path / "w").exists()


def test_convert_a_damaged_torch_checkpoint(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:-600])  # truncated: the zip's directory is gone, torch's magic stays
    assert main(["convert", "--from-torch", str(path), "--out", str(tmp_path / "w")]) == 2
    one_error_line(capsys, str(path))


def test_convert_with_a_model_of_another_size_names_the_sizes(tmp_path, capsys):
    pytest.importorskip("torch")
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.dit import DiTConfig, abstract_params
    cfg = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_params(cfg))  # shapes are what matters
    torch_io.save_state_dict(dit_torch.to_torch(params, cfg), str(tmp_path / "c.pt"))
    assert main(["convert", "--from-torch", str(tmp_path / "c.pt"), "--model", "DiT-S/2", "--input-size", "8",
                 "--num-classes", "10", "--out", str(tmp_path / "w")]) == 2
    one_error_line(capsys, "checkpoint has 2 blocks, DiT-S/2 has 12", "checkpoint has hidden size 64")


# --------------------------------------------------------------------------------------- evaluate

@pytest.fixture(scope="module")
def reference_batch(tmp_path_factory):
    from dit_jax.metrics.adm_metrics import POOL_DIM, SPATIAL_DIM, write_reference_batch
    rng = np.random.default_rng(0)
    path = str(tmp_path_factory.mktemp("ref") / "ref.npz")
    write_reference_batch(path, rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), rng.normal(size=(6, POOL_DIM)),
                          rng.normal(size=(6, SPATIAL_DIM)), n_images=6)
    return path


def _npy_renamed(path):
    np.save(str(path) + ".npy", np.zeros((4, 8, 8, 3), np.uint8))
    os.rename(str(path) + ".npy", path)


def _truncated(path):
    np.savez(path, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:200])


def _flip_bytes(path, start=300, count=64):
    """Same size, `count` bytes flipped: the archive still opens, reading the member there fails its CRC."""
    data = bytearray(path.read_bytes())
    data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
    path.write_bytes(bytes(data))


def _damaged_member(path):
    np.savez(path, arr_0=np.full((4, 8, 8, 3), 7, np.uint8), labels=np.arange(4))
    _flip_bytes(path)


@pytest.mark.parametrize("make, name", [(_npy_renamed, "samples.npz"), (_truncated, "samples.npz"),
                                        (_truncated, "samples.npz.shards/shard_000000.npz"),
                                        (_damaged_member, "samples.npz.shards/shard_000001.npz")],
                         ids=["npy renamed npz", "truncated npz", "truncated shard", "damaged shard"])
def test_evaluate_names_an_unreadable_sample_file(reference_batch, tmp_path, capsys, make, name):
    path = tmp_path / name
    os.makedirs(path.parent, exist_ok=True)
    make(path)
    (tmp_path / "i.pth").write_bytes(b"never read: the samples are read first")
    assert main(["evaluate", reference_batch, str(path), "--inception", str(tmp_path / "i.pth"),
                 "--min-reference-images", "4"]) == 2
    one_error_line(capsys, f"error: {path}: ")


@pytest.mark.parametrize("damage", ["npy renamed npz", "damaged images"])
def test_evaluate_names_an_unreadable_reference_batch(reference_batch, tmp_path, capsys, damage):
    path = tmp_path / "ref.npz"
    if damage == "npy renamed npz":
        _npy_renamed(path)
    else:
        shutil.copy(reference_batch, path)
        _flip_bytes(path)  # inside arr_0, the first member
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    (tmp_path / "i.pth").write_bytes(b"never read: the reference is read first")
    assert main(["evaluate", str(path), str(tmp_path / "s.npz"), "--inception", str(tmp_path / "i.pth"),
                 "--min-reference-images", "4"]) == 2
    one_error_line(capsys, f"error: {path}: ")
