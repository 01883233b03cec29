"""Refusals and the error mapping of the command line (dit_jax.cli), first met as faults on a new user's
first day: commands that would delete or overwrite what they did not make, a workdir that cannot be
written, device memory exhausted, permanent and transient OS errors, config files that do not run, and
bad flags: each a one-line error and exit 2 (a transient error keeps its traceback and exit 1). Each test
failed before its fix."""

import os

import jax
import numpy as np
import pytest

from dit_jax.cli import main
from helpers import one_error_line

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


# ------------------------------------------ 1. commands never delete or overwrite what they did not make

def test_reference_batch_replaces_only_a_reference_batch_and_only_with_force(tmp_path, capsys):
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    before = samples.read_bytes()
    (tmp_path / "i.pth").write_bytes(b"never read")
    common = ["reference-batch", "--dataset", "digits", "--image-size", "8", "--inception", str(tmp_path / "i.pth")]
    assert main(common + ["--out", str(samples)]) == 2
    one_error_line(capsys, "exists", "--force")
    assert main(common + ["--out", str(samples), "--force"]) == 2
    one_error_line(capsys, "is not a reference batch")
    assert samples.read_bytes() == before


def test_extract_latents_does_not_call_an_image_dataset_its_output(tmp_path, capsys):
    images = tmp_path / "digits" / "1.0.0"
    images.mkdir(parents=True)
    (images / "dataset_info.json").write_text('{"name": "digits"}')
    (images / "features.json").write_text('{"featuresDict": {"features": {"image": {}, "label": {}}}}')
    (tmp_path / "vae").mkdir()
    args = ["extract-latents", "--dataset", "digits", "--data-dir", str(tmp_path), "--image-size", "8",
            "--vae", str(tmp_path / "vae"), "--out-name", "digits"]
    assert main(args) == 2
    one_error_line(capsys, "is not a latent dataset", "--out-name")
    (tmp_path / "other" / "1.0.0").mkdir(parents=True)
    assert main(args[:-1] + ["other"]) == 2
    one_error_line(capsys, "holds no finished dataset", "never deleted")


def test_build_dataset_into_an_occupied_directory_fails_before_building(tmp_path, capsys):
    (tmp_path / "data" / "mine" / "1.0.0").mkdir(parents=True)
    (tmp_path / "data" / "mine" / "1.0.0" / "notes.txt").write_text("keep")
    (tmp_path / "src" / "a").mkdir(parents=True)
    assert main(["build-dataset", str(tmp_path / "src"), "--name", "mine", "--data-dir", str(tmp_path / "data")]) == 2
    one_error_line(capsys, "holds no finished dataset")
    assert (tmp_path / "data" / "mine" / "1.0.0" / "notes.txt").read_text() == "keep"


# ----------------------------------------------------------- 2. a workdir that cannot be written: exit 2

def _train_cli(workdir, *more):
    return main(["train", f"--workdir={workdir}", "--config.total_steps=1", "--config.evals.digits.kind=",
                 "--config.sample.every=0", *more])


@pytest.mark.parametrize("case, needles", [
    ("a regular file", ["is a regular file, not a directory"]),
    ("below a regular file", ["which is a regular file, not a directory"]),
    ("/sys", ["cannot be written", "operation not permitted"]),
    ("read-only filesystem", ["cannot be written", "read-only"]),
    ("empty", ["--workdir is empty"]),
])
def test_a_workdir_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, case, needles):
    import errno
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    workdir = {"a regular file": str(blocker), "below a regular file": str(blocker / "run"),
               "/sys": "/sys/dit-jax-test/run", "read-only filesystem": str(tmp_path / "ro"), "empty": ""}[case]
    if case == "/sys" and os.access("/sys", os.W_OK) and os.geteuid() != 0:
        pytest.skip("/sys is writable here")
    if case == "read-only filesystem":  # as a read-only mount answers the lock file's creation
        real_open = os.open

        def read_only(path, *args, **kwargs):
            if str(path).startswith(workdir):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *args, **kwargs)
        monkeypatch.setattr(os, "open", read_only)
    assert _train_cli(workdir) == 2
    line = one_error_line(capsys)
    for needle in needles:
        assert needle in line.lower(), line
    assert blocker.read_text() == "not a directory"


def test_device_out_of_memory_is_bad_input_not_a_crash_to_retry(tmp_path, capsys, monkeypatch):
    from dit_jax.train import loop

    def oom(config, workdir):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB.")
    monkeypatch.setattr(loop, "train_and_evaluate", oom)
    assert _train_cli(str(tmp_path / "run")) == 2
    one_error_line(capsys, "device memory exhausted", "80.00GiB", "remat")


def test_a_permanent_os_error_in_any_command_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["models"]) == 0  # (a control: the command itself works)
    capsys.readouterr()
    assert main(["sample", "--num", "1", "--steps", "2", "--out", str(blocker / "grid.png")]) == 2
    one_error_line(capsys, "which is a file, not a directory")  # found as the arguments are parsed


@pytest.mark.parametrize("error, needle", [
    (PermissionError(13, "Permission denied", "/srv/x"), "/srv/x: permission denied"),
    (OSError(30, "Read-only file system", "/mnt/ro/x"), "/mnt/ro/x: the filesystem is read-only"),
    (OSError(28, "No space left on device", "/data/x"), "/data/x: no space left on the device"),
    (FileExistsError(17, "File exists", "{file}"), "is a regular file where a directory is expected"),
])
def test_a_permanent_os_error_met_while_working_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, error,
                                                                        needle):
    from dit_jax.cli import models
    blocker = tmp_path / "file"
    blocker.write_text("x")
    if error.filename == "{file}":
        error = FileExistsError(17, "File exists", str(blocker))  # what os.makedirs raises through a file

    def fails(args):
        raise error
    monkeypatch.setattr(models, "run", fails)
    assert main(["models"]) == 2
    one_error_line(capsys, needle)


def test_a_transient_os_error_keeps_its_traceback_and_exit_1(monkeypatch):
    from dit_jax.cli import models

    def dropped(args):
        raise ConnectionResetError(104, "Connection reset by peer")
    monkeypatch.setattr(models, "run", dropped)
    with pytest.raises(ConnectionResetError):  # the console script turns it into a traceback and exit 1
        main(["models"])


# ---------------------------------------------------------- 3. a config file that does not run: one line

BAD_CONFIG_FILES = [
    ("syntax error", "def get_config(arg=''):\n    return (\n",
     ":2: syntax error in the config file: '(' was never closed"),
    ("raises in get_config", "import ml_collections\n\n\ndef get_config(arg=''):\n    return {}['missing']\n",
     ":5: get_config() raised KeyError: 'missing'"),
    ("raises on import", "import ml_collections\nx = 1 / 0\n", ":2: running the config file raised ZeroDivisionError"),
    ("no get_config", "import ml_collections\n\n\ndef config():\n    return None\n", "defines no get_config()"),
    ("returns a dict", "def get_config(arg=''):\n    return {'batch_size': 1}\n", "not an ml_collections.ConfigDict"),
]


@pytest.mark.parametrize("command", ["train", "compile"])
@pytest.mark.parametrize("name, text, needle", BAD_CONFIG_FILES, ids=[c[0] for c in BAD_CONFIG_FILES])
def test_a_config_file_that_does_not_run_is_one_line_naming_file_and_line(tmp_path, capsys, command, name, text,
                                                                          needle):
    path = tmp_path / "my_config.py"
    path.write_text(text)
    extra = ["--topology=v5p-8"] if command == "compile" else [f"--workdir={tmp_path / 'run'}"]
    assert main([command, f"--config={path}", *extra]) == 2
    one_error_line(capsys, str(path), needle)
    assert not (tmp_path / "run").exists()


def test_train_and_compile_parse_config_files_in_one_module():
    """No copy of the parsing: train, compile and benchmark take --config from the one front end
    (dit_jax.cli.config_args), which takes it from dit_jax.configs.files."""
    import inspect

    from dit_jax.cli import benchmark, compile as compile_command, config_args, train
    for module in (train, compile_command, benchmark):
        source = inspect.getsource(module)
        assert "DEFINE_config_file" not in source and "config_from_args" not in source
        assert "config_args.load(args" in source
    assert "from dit_jax.configs.files import" in inspect.getsource(config_args)


# -------------------------------------------------------------------------------------- 4. smaller items

def test_version(capsys):
    import dit_jax
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dit-jax ") and "jax " in out and os.path.dirname(dit_jax.__file__) in out


def test_classes_with_an_empty_item_names_the_flag(capsys):
    assert main(["sample", "--classes", "1,,2", "--num", "2"]) == 2
    one_error_line(capsys, "--classes", "'1,,2'", "e.g. 207,360,387")
