"""Building the demo's digits dataset prints nothing: TFDS's "Downloading and preparing dataset ..." lines and
progress bars came before the demo's first line of its own, for a local build with no download."""

import contextlib

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from dit_jax.data import digits


def test_the_digits_build_prints_nothing(tmp_path, capfd):
    data_dir = digits.ensure_digits(str(tmp_path / "tfds"))
    out, err = capfd.readouterr()
    assert digits.is_built(data_dir)
    assert (out, err) == ("", ""), (out, err)
    assert tqdm_utils._active  # the progress bars are back on for whatever comes next


def test_control_tfds_prints_its_lines_without_the_quieting(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(digits, "quiet_build", contextlib.nullcontext)
    digits.ensure_digits(str(tmp_path / "tfds"))
    out, _ = capfd.readouterr()
    assert "Downloading and preparing dataset" in out and "downloaded and prepared to" in out, out


def test_a_user_who_turned_the_progress_bars_off_keeps_them_off(tmp_path):
    tfds.display_progress_bar(False)
    try:
        digits.ensure_digits(str(tmp_path / "tfds"))
        assert not tqdm_utils._active
    finally:
        tfds.display_progress_bar(True)
