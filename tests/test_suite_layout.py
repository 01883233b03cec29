"""The suite's own layout: `-m "not slow"` (README "Tests") leaves out the slow files' tests."""

import os
import subprocess
import sys

from conftest import HERE, SLOW_FILES


def test_every_slow_file_exists():
    assert sorted(name for name in SLOW_FILES if not os.path.isfile(os.path.join(HERE, name))) == []


def test_not_slow_deselects_the_slow_files_and_keeps_the_others():
    # test_demo.py is slow; test_suite_layout.py (this file) is not: the control that something is collected.
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                          os.path.join(HERE, "test_demo.py"), os.path.join(HERE, "test_suite_layout.py")],
                         capture_output=True, text=True, timeout=300, cwd=os.path.dirname(HERE))
    collected = [line for line in out.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/test_suite_layout.py::") for line in collected), out.stdout
    assert "deselected" in out.stdout, out.stdout
