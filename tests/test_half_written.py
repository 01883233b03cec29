"""Nothing non-finite or half-written is left as if it were a result: samples holding NaN/Inf are refused
(no black image, no npz of zeros), and a write that fails (a full disk, faked here) leaves no partial
temporary file behind: sample shards, the final npz, grids, a weights export, a dataset build."""

import errno
import glob
import os

import jax
import numpy as np
import pytest

from dit_jax import storage
from dit_jax.cli import main
from dit_jax.models.dit import DiTConfig, init_params
from dit_jax.weights import save_weights

pytestmark = pytest.mark.slow

TINY = DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=10)
FAST = ["--num", "2", "--steps", "2"]
NPZ = ["--num-samples", "4", "--steps", "2", "--batch-per-device", "2"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """{"good": tiny random weights, "huge": the same times 1e33 (finite, but no image comes out)}."""
    root = tmp_path_factory.mktemp("weights")
    params = init_params(TINY, jax.random.key(0))
    out = {"good": save_weights(str(root / "good"), params, TINY)}
    out["huge"] = save_weights(str(root / "huge"), jax.tree.map(lambda x: x * 1e33, params), TINY)
    return out


def _error(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(("error", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def _leftovers(directory):
    return [p for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True) if ".tmp" in os.path.basename(p)]


def test_samples_that_hold_nan_are_refused_not_written_as_black(weights, tmp_path, capsys):
    grid, npz = str(tmp_path / "g.png"), str(tmp_path / "s.npz")
    assert main(["sample", "--weights", weights["huge"], "--out", grid, *FAST]) == 2
    assert "samples hold NaN/Inf values" in _error(capsys)
    assert main(["sample", "--weights", weights["huge"], "--out", npz, *NPZ]) == 2
    assert "samples hold NaN/Inf values" in _error(capsys)
    assert not os.path.exists(grid) and not os.path.exists(npz)
    assert not glob.glob(str(tmp_path / "s.npz.shards" / "shard_*"))
    # and the same weights, not scaled, make images
    assert main(["sample", "--weights", weights["good"], "--out", grid, *FAST]) == 0


def test_a_setting_that_cannot_make_an_image_is_refused(weights, tmp_path, capsys):
    try:
        code = main(["sample", "--weights", weights["good"], "--out", str(tmp_path / "g.png"), "--cfg-scale", "inf"])
    except SystemExit as e:
        code = e.code
    assert code == 2 and "--cfg-scale" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "g.png")


class FullDisk:
    """Every local file write after the first `allow` fails half-way with ENOSPC, as on a full disk."""

    def __init__(self, monkeypatch, allow=0):
        self.allow = allow
        cls = type(storage.resolve("/tmp/x"))
        original = cls.write_bytes

        def write_bytes(path, data):
            if self.allow > 0:
                self.allow -= 1
                return original(path, data)
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(cls, "write_bytes", write_bytes)


@pytest.mark.parametrize("allow,what", [(1, "shard"), (3, "final npz")])
def test_a_full_disk_during_sample_leaves_no_partial_files_and_names_the_path(weights, tmp_path, monkeypatch,
                                                                              capsys, allow, what):
    # Writes in order: the shard manifest, shard 0, shard 1, the final npz (the lock is written apart).
    out = str(tmp_path / "s.npz")
    with monkeypatch.context() as m:
        FullDisk(m, allow)
        assert main(["sample", "--weights", weights["good"], "--out", out, *NPZ]) == 2
    line = _error(capsys)
    assert "no space left on the device" in line and str(tmp_path) in line, line
    assert not os.path.exists(out) and _leftovers(str(tmp_path)) == []
    assert main(["sample", "--weights", weights["good"], "--out", out, *NPZ]) == 0  # with space again: resumes
    assert np.load(out)["arr_0"].shape == (4, 8, 8, 1)


def test_a_full_disk_while_writing_a_grid_leaves_no_partial_file(weights, tmp_path, monkeypatch, capsys):
    grid = str(tmp_path / "g.png")
    with monkeypatch.context() as m:
        FullDisk(m)
        assert main(["sample", "--weights", weights["good"], "--out", grid, *FAST]) == 2
    assert f"{grid}: no space left on the device" in _error(capsys)
    assert os.listdir(tmp_path) == []


def test_a_full_disk_during_a_weights_export_leaves_no_partial_directory(weights, tmp_path, monkeypatch, capsys):
    import orbax.checkpoint as ocp
    original = ocp.Checkpointer.save

    def save(self, directory, *args, **kwargs):
        original(self, directory, *args, **kwargs)  # written, then the disk fills as it is finalised
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    monkeypatch.setattr(ocp.Checkpointer, "save", save)
    out = str(tmp_path / "out")
    from dit_jax.weights import load_weights
    params, config = load_weights(weights["good"])
    with pytest.raises(OSError):
        save_weights(out, params, config)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_a_full_disk_during_a_dataset_build_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from dit_jax.data import image_folder
    src = tmp_path / "src"
    for label in ("a", "b"):
        (src / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(src / label / f"{i}.png")
    original = image_folder._ImageFolderBuilder._generate_examples

    def generate(self):
        for n, example in enumerate(original(self)):
            if n == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield example
    monkeypatch.setattr(image_folder._ImageFolderBuilder, "_generate_examples", generate)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    assert main(["build-dataset", str(src), "--name", "full_disk_test", "--data-dir", str(data_dir)]) != 0
    assert os.listdir(data_dir) == [], os.listdir(data_dir)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_weights_directory_is_one_error_line_naming_it(weights, tmp_path, capsys, damage):
    import shutil
    wdir = str(tmp_path / "w")
    shutil.copytree(weights["good"], wdir)
    files = sorted(glob.glob(os.path.join(wdir, "params", "**", "d", "*"), recursive=True), key=os.path.getsize)
    with open(files[-1], "r+b") as f:
        data = f.read()
        f.seek(0)
        if damage == "truncate":
            f.truncate(len(data) // 2)
        else:  # every bit of the second half inverted
            f.write(data[: len(data) // 2] + bytes(b ^ 0xFF for b in data[len(data) // 2:]))
    assert main(["sample", "--weights", wdir, "--out", str(tmp_path / "g.png"), *FAST]) == 2
    line = _error(capsys)
    assert f"the weights in {wdir} " in line and ("are damaged" in line or "do not read" in line), line
    assert not os.path.exists(tmp_path / "g.png")


def test_weights_holding_nan_are_not_written(tmp_path):
    from dit_jax.exit_codes import BadInput
    params = jax.tree.map(lambda x: x * np.nan, init_params(TINY, jax.random.key(0)))
    with pytest.raises(BadInput, match="NaN/Inf"):
        save_weights(str(tmp_path / "w"), params, TINY)
    assert os.listdir(tmp_path) == []
