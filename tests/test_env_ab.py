"""tools/env_ab.py: per-variant processes timed round by round, for the train step and the sampler."""

import os
import re
import sys

import pytest

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import env_ab  # noqa: E402

# Each variant is a process that compiles a (one-block) model: the file is in conftest.SLOW_FILES.
LINE = re.compile(r"^\s*([\d.]+) s/(step|call)\s+([\d.]+)x \(([\d.]+)-([\d.]+)\)\s+sys [\d.]+ s/\2\s+"
                  r"faults [\d,]+/\2\s+resident ([\d.]+) GB\s+\[(.*)\]$")


def _rows(text: str) -> list[tuple]:
    return [LINE.match(line).groups() for line in text.strip().splitlines()]


def test_train_step_variants_each_get_a_row(capsys):
    assert env_ab.main(["--model", "S/8", "--depth", "1", "--rounds", "2", "--steps", "1", "DIT_JAX_CPU_MALLOC=1",
                        "DIT_JAX_CPU_MALLOC=0"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [(r[1], r[6]) for r in rows] == [("step", "DIT_JAX_CPU_MALLOC=1"), ("step", "DIT_JAX_CPU_MALLOC=0")]
    assert rows[0][2:5] == ("1.00", "1.00", "1.00")  # the first variant is the baseline
    assert all(float(r[0]) > 0 and float(r[5]) > 0.1 for r in rows)


def test_sampler_program_times_calls(capsys):
    assert env_ab.main(["--program", "sample", "--model", "S/8", "--depth", "1", "--rounds", "1", "--steps", "1", ""]) == 0
    (row,) = _rows(capsys.readouterr().out)
    assert row[1] == "call" and row[6] == "as is" and float(row[0]) > 0


def test_a_variant_that_cannot_start_is_one_error_line(capsys):
    assert env_ab.main(["--model", "S/8", "--depth", "1", "--rounds", "1", "JAX_PLATFORMS=no_such_platform"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the process for 'JAX_PLATFORMS=no_such_platform' exited") and err.count("\n") == 1


def test_no_variant_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_:
        env_ab.main(["--model", "S/8"])
    assert exit_.value.code == 2
