"""The suite's own layout (docs/testing.md): slow files mark themselves, markers are strict, `-m "not slow"`
leaves out the slow files' tests, no test file imports another, and none is over 500 lines."""

import ast
import configparser
import glob
import os
import re
import subprocess
import sys

from conftest import HERE

ROOT = os.path.dirname(HERE)
SLOW_MARK = "pytestmark = pytest.mark.slow"
# What a test does that makes its file slow: trains, or starts multi-device / multi-process jax programs.
SLOW_SIGNS = re.compile(r"train_and_evaluate\(|run_8_devices\(|\bstart\(|Child\(|jax\.distributed|"
                        r"xla_force_host_platform_device_count")
# A longer test file (or helper module) is split by the dit_jax module its tests cover.
MAX_LINES = 500


def _test_files() -> list[str]:
    return sorted(glob.glob(os.path.join(HERE, "test_*.py")))


def _marked_slow(source: str) -> bool:
    return any(line.startswith(SLOW_MARK) for line in source.splitlines())


def _collect(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_files_that_train_or_start_jax_processes_mark_themselves_slow():
    unmarked = []
    for path in _test_files():
        if path == os.path.abspath(__file__):  # this file names the signs; it does none of it
            continue
        with open(path) as f:
            source = f.read()
        code = re.sub(r'r?"""(?:.|\n)*?"""', "", source)  # docstrings and scripts say, they do not do
        if SLOW_SIGNS.search(code) and not _marked_slow(source):
            unmarked.append(os.path.basename(path))
    assert unmarked == [], f"these files train or start processes: add `{SLOW_MARK}` after their imports"


def test_the_slow_sign_heuristic_sees_a_training_file(tmp_path):
    """The control on the check above: a file that trains, unmarked, is caught; marked, it passes."""
    trains = "from helpers import tiny_config\n\ndef test_x(tmp_path):\n    train_and_evaluate(tiny_config(), tmp_path)\n"
    assert SLOW_SIGNS.search(trains) and not _marked_slow(trains)
    assert _marked_slow("import pytest\n\n" + SLOW_MARK + "  # why\n" + trains)


def test_markers_are_registered_and_strict(tmp_path):
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert "--strict-markers" in cfg["tool:pytest"]["addopts"].split()
    assert "--no-loadscope-reorder" in cfg["tool:pytest"]["addopts"].split()  # conftest's order holds under xdist
    assert cfg["tool:pytest"]["markers"].strip().startswith("slow:")
    # A misspelt marker stops the collection (the control: the same file with the registered one passes).
    for mark, ok in (("slwo", False), ("slow", True)):
        (tmp_path / "test_mark.py").write_text(f"import pytest\n\npytestmark = pytest.mark.{mark}\n\n\n"
                                               "def test_nothing():\n    pass\n")
        out = _collect("-c", os.path.join(ROOT, "setup.cfg"), "--rootdir", str(tmp_path), str(tmp_path / "test_mark.py"),
                       cwd=tmp_path)
        assert (out.returncode == 0) == ok, out.stdout[-2000:] + out.stderr[-2000:]
        if not ok:
            assert "'slwo' not found in `markers` configuration option" in out.stdout + out.stderr


def test_not_slow_deselects_the_slow_files_and_keeps_the_others():
    # test_demo.py is slow; test_suite_layout.py (this file) is not: the control that something is collected.
    out = _collect("-m", "not slow", os.path.join(HERE, "test_demo.py"), os.path.join(HERE, "test_suite_layout.py"))
    collected = [line for line in out.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/test_suite_layout.py::") for line in collected), out.stdout
    assert "deselected" in out.stdout, out.stdout


def test_no_test_file_imports_another():
    """Shared helpers live in tests/helpers.py or tests/<topic>_helpers.py (or conftest.py's fixtures):
    importing a test file would run its module code, and its marks and fixtures would leak into the importer."""
    offenders = []
    for path in _test_files() + sorted(glob.glob(os.path.join(HERE, "*helpers.py"))):
        with open(path) as f:
            source = f.read()
        modules = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module}
        modules |= {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
        # the scripts that tests run in child processes import too
        modules |= set(re.findall(r"^from (test_\w+) import", source, flags=re.M))
        offenders += [f"{os.path.basename(path)} imports {m}" for m in sorted(modules) if m.startswith("test_")]
    assert offenders == [], offenders


def _over_max_lines(paths) -> list[str]:
    long = []
    for path in paths:
        with open(path) as f:
            lines = sum(1 for _ in f)
        if lines > MAX_LINES:
            long.append(f"{os.path.basename(path)}: {lines} lines")
    return long


def test_no_test_file_is_over_500_lines():
    """The test files and the helper modules beside them (tests/*.py; not the reference statements in
    tests/*_reference/, which follow the layout of the code they state)."""
    paths = sorted(glob.glob(os.path.join(HERE, "*.py")))
    assert os.path.abspath(__file__) in paths and len(paths) > 50  # the control that the glob finds the files
    assert _over_max_lines(paths) == [], f"split these by the dit_jax module their tests cover (<= {MAX_LINES} lines)"


def test_the_length_check_sees_a_long_file(tmp_path):
    """The control on the check above: a file of 501 lines is caught, one of 500 passes."""
    for lines, caught in ((MAX_LINES + 1, True), (MAX_LINES, False)):
        path = tmp_path / "test_long.py"
        path.write_text("pass\n" * lines)
        assert _over_max_lines([str(path)]) == ([f"test_long.py: {lines} lines"] if caught else [])


def test_the_longest_first_list_names_files_that_exist():
    """conftest.LONGEST_FIRST names files that exist (a renamed file would silently fall back to the end)."""
    from conftest import LONGEST_FIRST
    missing = [name for name in LONGEST_FIRST if not os.path.isfile(os.path.join(HERE, name))]
    assert not missing, missing
