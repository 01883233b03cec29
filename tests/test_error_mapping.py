"""The one mapping from every exception to a line and an exit code (dit_jax.cli.main.error_line, the
codes in dit_jax/exit_codes.py), through `main([...])`: each command's work is replaced by a stub that
raises, or a real reader is fed a bad file. The Ctrl-C of a real `sample` process is in
test_error_mapping_ctrl_c.py (it starts processes)."""

import errno
import os
import socket

import numpy as np
import pytest

from dit_jax import exit_codes, storage
from dit_jax.cli import main, models, sample
from dit_jax.models.dit import DiTConfig
from helpers import one_error_line


TINY = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10)


def _raising(monkeypatch, module, error):
    def run(args):
        raise error
    monkeypatch.setattr(module, "run", run)


def _no_traceback(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.splitlines()


@pytest.mark.parametrize("error, code, needle", [
    (exit_codes.BadInput("--x is wrong: pass --x=1"), 2, "--x is wrong: pass --x=1"),
    (ValueError("bad value"), 2, "bad value"),
    (KeyError("no such key 'k'"), 2, "no such key 'k'"),
    (exit_codes.Diverged("loss is nan at step 3"), 3, "loss is nan at step 3"),
    (FloatingPointError("invalid value (nan) encountered"), 3, "invalid value (nan)"),
    (exit_codes.RunStopped("the shards changed under this run: rerun"), 1, "the shards changed"),
    (OSError(errno.EACCES, "Permission denied", "/root/x"), 2, "/root/x: permission denied"),
])
def test_each_kind_of_error_is_one_line_and_its_code(monkeypatch, capsys, error, code, needle):
    _raising(monkeypatch, models, error)
    assert main(["models"]) == code
    line = one_error_line(capsys, needle)
    assert not line.startswith("error: error")


def test_a_preemption_is_announced_where_it_happens_so_main_adds_no_line(monkeypatch, capsys):
    _raising(monkeypatch, models, exit_codes.Preempted(7))
    assert main(["models"]) == 75
    assert capsys.readouterr().err == ""


def test_an_absl_flag_error_is_bad_input(monkeypatch, capsys):
    from absl import flags
    _raising(monkeypatch, models, flags.IllegalFlagValueError("flag --n=abc: could not parse"))
    assert main(["models"]) == 2
    one_error_line(capsys, "--n=abc")


def test_ctrl_c_is_130_and_one_line(monkeypatch, capsys):
    _raising(monkeypatch, models, KeyboardInterrupt())
    assert main(["models"]) == 130
    assert _no_traceback(capsys) == ["error: interrupted"]


def test_ctrl_c_during_sample_num_samples_says_a_rerun_resumes(monkeypatch, capsys, tmp_path):
    _raising(monkeypatch, sample, KeyboardInterrupt())
    assert main(["sample", "--num-samples", "8", "--out", str(tmp_path / "s.npz")]) == 130
    assert _no_traceback(capsys) == [f"error: {sample.INTERRUPTED}"]
    assert "rerun the same command to resume" in sample.INTERRUPTED
    assert main(["sample", "--out", str(tmp_path / "grid.png")]) == 130  # a grid starts over: no promise
    assert _no_traceback(capsys) == ["error: interrupted"]


def test_a_full_disk_names_the_path_written(monkeypatch, capsys, tmp_path):
    """An OSError from a write() has no filename: the line names the command's --out."""
    out = str(tmp_path / "s.npz")
    _raising(monkeypatch, sample, OSError(errno.ENOSPC, "No space left on device"))
    assert main(["sample", "--num-samples", "8", "--out", out]) == 2
    one_error_line(capsys, f"{out}: no space left on the device: free space there and rerun")


def test_the_negative_control_a_transient_error_keeps_its_traceback(monkeypatch):
    _raising(monkeypatch, models, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    with pytest.raises(ConnectionResetError):  # the console script prints its traceback, exit 1
        main(["models"])


def test_any_other_exception_is_a_crash_with_its_traceback(monkeypatch):
    _raising(monkeypatch, models, AttributeError("'NoneType' object has no attribute 'shape'"))
    with pytest.raises(AttributeError):
        main(["models"])


# ------------------------------------------------------------------ library errors from user files

def _tiny_params():
    """Random parameters of TINY, made without compiling the model's init."""
    import jax

    from dit_jax.models.dit import abstract_params
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype) * 0.02, abstract_params(TINY))


@pytest.mark.parametrize("content, kind", [
    (b"PK\x03\x04" + b"\x00" * 40, "BadZipFile"),  # a zip (npz) cut short
    (b"\x80\x04\x95 not a pickle at all", "UnpicklingError|pickled"),
])
def test_a_damaged_npz_names_the_file(tmp_path, capsys, content, kind):
    import re
    ref, samples, inception = tmp_path / "ref.npz", tmp_path / "samples.npz", tmp_path / "inception.pth"
    ref.write_bytes(content)
    np.savez(samples, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    inception.write_bytes(b"x")
    assert main(["evaluate", str(ref), str(samples), "--inception", str(inception)]) == 2
    line = one_error_line(capsys, str(ref))
    assert re.search(kind, line), line


def test_a_library_error_from_an_unwrapped_reader_names_what_was_read(tmp_path, capsys):
    """Orbax reading a weights directory whose JSON is damaged: the raw JSONDecodeError, mapped to one
    line that names the directory."""
    from dit_jax.weights import save_weights
    weights = tmp_path / "w"
    save_weights(str(weights), _tiny_params(), TINY)
    (weights / "config" / "metadata").write_text("{not json")
    assert main(["sample", "--weights", str(weights), "--num", "1", "--steps", "1",
                 "--out", str(tmp_path / "g.png")]) == 2
    one_error_line(capsys, str(weights), "JSONDecodeError")
    assert not (tmp_path / "g.png").exists()


def test_a_damaged_safetensors_file_names_the_file(tmp_path, capsys):
    from dit_jax.cli import convert
    bad = tmp_path / "diffusion_pytorch_model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert main(["convert", "--from-diffusers", str(bad), "--out", str(tmp_path / "w")]) == 2
    one_error_line(capsys, str(bad))
    assert convert.NAME == "convert"


def test_a_converter_fed_a_tensor_of_the_wrong_shape_names_the_tensor_and_the_file(tmp_path, capsys):
    pytest.importorskip("torch")
    from dit_jax.convert import dit_torch, torch_io
    sd = dit_torch.to_torch(_tiny_params(), TINY)
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch_io.save_state_dict(sd, str(good))
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"][:-1]  # one row short: 95 x 32
    torch_io.save_state_dict(sd, str(bad))
    assert main(["convert", "--from-torch", str(good), "--out", str(tmp_path / "w"), "--num-heads", "2"]) == 0
    capsys.readouterr()
    assert main(["convert", "--from-torch", str(bad), "--out", str(tmp_path / "w2"), "--num-heads", "2"]) == 2
    one_error_line(capsys, str(bad), "'blocks.0.attn.qkv.weight'", "(95, 32)")


# ------------------------------------------------------------------ remote stores

@pytest.fixture
def closed_store(monkeypatch):
    """A gs:// endpoint on this machine where nothing listens: refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(storage, "_PROBED", {})
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_store_is_one_line_naming_the_endpoint_and_the_cause_quickly(closed_store, tmp_path, capsys):
    import time
    start = time.monotonic()
    argv = ["train", "--config", "configs/dit.py:XL/2", "--workdir", str(tmp_path / "run"), "--dry_run",
            "--config.data.latents=encode", "--config.data.vae=gs://bucket/sd-vae-ft-ema"]
    assert main(argv) == 2
    out = capsys.readouterr()
    # The dry run makes every other check, prints the plan, and says which checks it could not make and why.
    assert "mesh data=" in out.out and "DiT-XL/2" in out.out, out.out
    [unchecked] = [line for line in out.out.splitlines() if line.startswith("not checked:")]
    assert "gs://bucket/sd-vae-ft-ema" in unchecked and f"cannot reach the store at {closed_store}" in unchecked
    assert "refuses" in unchecked, unchecked
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in out.err and len(errors) == 1 and "could not make every check" in errors[0], out.err
    assert time.monotonic() - start < 30
    assert not (tmp_path / "run").exists()


def test_a_bad_config_is_refused_before_the_unreachable_store_is_mentioned(closed_store, tmp_path, capsys):
    argv = ["train", "--config", "configs/dit.py:XL/2", "--workdir", str(tmp_path / "run"), "--dry_run",
            "--config.data.latents=encode", "--config.data.vae=gs://bucket/sd-vae-ft-ema", "--config.optim.lr=-1"]
    assert main(argv) == 2
    one_error_line(capsys, "optim.lr")


def test_the_control_a_reachable_store_is_not_refused(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(storage, "_PROBED", {})
        assert str(storage.resolve("gs://bucket/x")) == "gs://bucket/x"


def test_a_store_client_error_is_one_line_naming_the_endpoint(monkeypatch, capsys):
    aiohttp = pytest.importorskip("aiohttp")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)  # Google's endpoint, not a test's emulator
    _raising(monkeypatch, models, aiohttp.ClientError("Cannot connect to host storage.googleapis.com:443"))
    assert main(["models"]) == 2
    one_error_line(capsys, "the store at https://storage.googleapis.com failed", "Cannot connect to host")


def test_missing_credentials_say_how_to_give_them(monkeypatch, capsys):
    auth = pytest.importorskip("google.auth.exceptions")
    _raising(monkeypatch, models, auth.DefaultCredentialsError("Your default credentials were not found."))
    assert main(["models"]) == 2
    one_error_line(capsys, "no credentials for the store", "gcloud auth application-default login")


def test_the_exit_codes_are_documented_where_they_are_defined():
    doc = exit_codes.__doc__
    for code in ("0 ", "2 ", "3 ", "75 ", "130 ", "1 "):
        assert f"\n    {code}" in doc, code
    assert exit_codes.INTERRUPTED == 130 and os.path.basename(exit_codes.__file__) == "exit_codes.py"
