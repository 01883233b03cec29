"""The fault sweep: every kind of file in a workdir, damaged every way, under every command that reads a run.

A tiny run is trained once (checkpoints at steps 2 and 4, and the lock a crashed run leaves). For each
file kind and each corruption, a copy is damaged and each reader runs in this process through the CLI's
main(): `train` resume (to step 5), `sample` grid, `sample --num-samples`, `export-weights`. Every cell
must end without a traceback, with exit 0 or 2 (docs/faults.md), and an exit 0 must either give the
intact run's output or say which step it used instead of the damaged one.

The table of outcomes is docs/faults.md's "What survives what": this test fails when the page differs;
`DIT_JAX_WRITE_FAULT_TABLE=1 pytest tests/test_fault_sweep.py` rewrites it.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback

import jax
import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.train.checkpoint import load_ema
from helpers import TINY_FLAGS

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "faults.md")
BEGIN, END = "<!-- fault table: begin (tests/test_fault_sweep.py) -->", "<!-- fault table: end -->"
RUN_FLAGS = [*TINY_FLAGS, "--config.checkpoint_every=2", "--config.keep_checkpoints=10"]
NEWEST, OLDER = 4, 2


# ---------------------------------------------------------------- the files, and how they are damaged

def _files(kind, wd):
    step = os.path.join(wd, "checkpoints", str(NEWEST))
    return {
        "checkpoint arrays": lambda: glob.glob(os.path.join(step, "state", "**", "d", "*"), recursive=True),
        "checkpoint metadata": lambda: [os.path.join(step, "state", "_METADATA")],
        "commit markers": lambda: [os.path.join(step, "commit_success.txt"), os.path.join(step, "_CHECKPOINT_METADATA")],
        "stored config": lambda: [os.path.join(step, "config", "metadata")],
        "metrics.jsonl": lambda: [os.path.join(wd, "metrics.jsonl")],
        "goodput ledger": lambda: [os.path.join(wd, "goodput.json")],
        "lock": lambda: [os.path.join(wd, "train.lock")],
    }[kind]()


def _rewrite(path, change):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(change(data))


def _flip(data):
    """Every bit of a block in the middle inverted (up to 4 KiB)."""
    n = max(1, min(4096, len(data) // 2))
    start = (len(data) - n) // 2
    return data[:start] + bytes(b ^ 0xFF for b in data[start:start + n]) + data[start + n:]


CORRUPTIONS = {
    "truncate": lambda p: _rewrite(p, lambda d: d[: len(d) // 2]),
    "flip bytes": lambda p: _rewrite(p, _flip),
    "delete": os.remove,
    "empty": lambda p: _rewrite(p, lambda d: b""),
    "non-UTF-8": lambda p: _rewrite(p, lambda d: d[: len(d) // 2] + b"\xff\xfe\xc3\x28" + d[len(d) // 2:]),
}
KINDS = ("checkpoint arrays", "checkpoint metadata", "commit markers", "stored config", "metrics.jsonl",
         "goodput ledger", "lock")


def _damage(wd, kind, corruption):
    for path in _files(kind, wd):
        CORRUPTIONS[corruption](path)
        if kind == "lock" and os.path.exists(path):  # left by a crash a minute ago, as the intact one
            past = time.time() - 60
            os.utime(path, (past, past))


# ---------------------------------------------------------------- the readers

def _train(wd, out):
    return ["train", f"--workdir={wd}", *RUN_FLAGS, "--config.total_steps=5"]


def _grid(wd, out):
    return ["sample", "--workdir", wd, "--out", os.path.join(out, "grid.png"), "--num", "2", "--steps", "2"]


def _npz(wd, out):
    return ["sample", "--workdir", wd, "--out", os.path.join(out, "s.npz"), "--num-samples", "2", "--steps", "2",
            "--batch-per-device", "2"]


def _export(wd, out):
    return ["export-weights", "--workdir", wd, "--out", os.path.join(out, "weights")]


def _result(reader, wd, out):
    """What the reader made, to compare with the intact run's."""
    if reader == "train":
        return jax.tree.leaves(load_ema(wd, 5)[0])
    if reader == "sample grid":
        return [np.frombuffer(open(os.path.join(out, "grid.png"), "rb").read(), np.uint8)]
    if reader == "sample --num-samples":
        return [np.load(os.path.join(out, "s.npz"))["arr_0"]]
    from dit_jax.weights import load_weights
    return jax.tree.leaves(load_weights(os.path.join(out, "weights"))[0])


READERS = {"train": _train, "sample grid": _grid, "sample --num-samples": _npz, "export-weights": _export}


def _run(argv, capsys):
    """(exit code or "traceback", stdout + stderr) of the CLI in this process."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - a traceback is what the sweep looks for
        return "traceback", traceback.format_exc()
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---------------------------------------------------------------- the run, and the intact outputs

def _dead_lock(wd):
    """The lock a `dit-jax train` killed with -9 leaves: its holder on this host, gone."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = ('{"host": "%s", "pid": %d, "token": "dead", "heartbeat": %f}'
              % (socket.gethostname(), int(child.stdout), time.time() - 60))
    with open(os.path.join(wd, "train.lock"), "w") as f:
        f.write(record)


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    wd = str(root / "run")
    assert main(["train", f"--workdir={wd}", *RUN_FLAGS, "--config.total_steps=4"]) == 0
    _dead_lock(wd)
    return wd


def test_every_reader_survives_every_damage_to_every_file(intact, tmp_path, capsys):
    expected, problems, table = {}, [], {}
    for reader, argv in READERS.items():
        wd, out = _copy(intact, tmp_path / f"intact-{len(expected)}")
        code, text = _run(argv(wd, out), capsys)
        assert code == 0, text[-3000:]
        expected[reader] = _result(reader, wd, out)
    n = 0
    for kind in KINDS:
        for corruption in CORRUPTIONS:
            for reader, argv in READERS.items():
                n += 1
                wd, out = _copy(intact, tmp_path / f"c{n}")
                _damage(wd, kind, corruption)
                code, text = _run(argv(wd, out), capsys)
                outcome, problem = _judge(reader, code, text, wd, out, expected[reader])
                table[(kind, corruption, reader)] = outcome
                if problem:
                    problems.append(f"{kind} / {corruption} / {reader}: {problem}")
                shutil.rmtree(tmp_path / f"c{n}")
    _check_doc(_table(table))
    assert not problems, "\n".join(problems)


def _copy(intact, base):
    os.makedirs(base)
    wd, out = str(base / "run"), str(base / "out")
    shutil.copytree(intact, wd)
    os.makedirs(out)
    return wd, out


def _used_step(reader, text):
    """The step the command says it used (train: resumed from; readers: "at step N")."""
    import re
    pattern = r"resumed from step (\d+)" if reader == "train" else r"at step (\d+)"
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


def _judge(reader, code, text, wd, out, expected):
    """(the table's cell, what is wrong with it or None). An exit 0 must name the step it used: the
    newest with the intact run's output, or the older one saying why the newest was skipped. `train`
    resumes exactly, so from either step it must reach the intact run's step 5."""
    if code == "traceback" or "Traceback" in text:
        return "traceback", f"a traceback:\n{text[-2000:]}"
    if code == 2:
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        if len(errors) != 1:
            return "2", f"exit 2 without exactly one error line:\n{text[-2000:]}"
        return "2: " + _reason(errors[0]), None
    if code != 0:
        return str(code), f"exit {code}, not a documented code (0 or 2):\n{text[-2000:]}"
    try:
        same = all(np.array_equal(a, b) for a, b in zip(_result(reader, wd, out), expected, strict=True))
    except Exception as e:  # noqa: BLE001
        return "0, no output", f"exit 0 but its output does not read: {e}"
    step = _used_step(reader, text)
    skipped = any(said in text for said in (f"step {NEWEST} is damaged", f"step {NEWEST} of {wd} is damaged",
                                            f"{os.sep}{NEWEST} has no commit marker"))
    if step == NEWEST and same and not skipped:
        return f"0, step {NEWEST}, same output", None
    if step == OLDER and skipped and (same or reader != "train"):
        return f"0, step {OLDER}: says why {NEWEST} was skipped" + (" (same step 5)" if reader == "train" else ""), None
    return f"0, step {step}", f"exit 0 with step {step} (same output: {same}, skip said: {skipped}):\n{text[-2000:]}"


def _reason(line):
    """A short, stable name for why a command refused."""
    for key, name in (("no intact checkpoint", "no intact checkpoint"), ("is in use by another", "lock held"),
                      ("holds a training run", "checkpoints lost"), ("unreadable", "unreadable file")):
        if key in line:
            return name
    return line[len("error: "):][:60]


# ---------------------------------------------------------------- the table in docs/faults.md

def _table(cells):
    readers = list(READERS)
    lines = ["| file | damage | " + " | ".join(f"`{r}`" for r in readers) + " |",
             "|---|---|" + "---|" * len(readers)]
    for kind in KINDS:
        for corruption in CORRUPTIONS:
            lines.append(f"| {kind} | {corruption} | " + " | ".join(cells[(kind, corruption, r)] for r in readers)
                         + " |")
    return "\n".join(lines)


def _check_doc(table):
    with open(DOC) as f:
        text = f.read()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    wanted = f"{head}{BEGIN}\n{table}\n{END}{tail}"
    if os.environ.get("DIT_JAX_WRITE_FAULT_TABLE"):
        with open(DOC, "w") as f:
            f.write(wanted)
        return
    assert text == wanted, ("docs/faults.md's table differs from what the sweep saw; rerun with "
                            "DIT_JAX_WRITE_FAULT_TABLE=1 to rewrite it:\n" + table)
