"""The small files of a workdir, damaged: metrics.jsonl, the goodput ledger and the lock are read without a
traceback or a raw codec error, and what cannot be read is said and kept aside, not trusted."""

import json
import os
import socket
import time

import pytest

from dit_jax.train.goodput import Ledger
from dit_jax.train.metrics_log import MetricsLog
from dit_jax.workdir_lock import WorkdirLock, WorkdirLocked


def _rows(n):
    return "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, n + 1)).encode()


def test_metrics_with_undecodable_bytes_keep_their_readable_rows_and_a_copy(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    data = _rows(6)
    damaged = data[:30] + b"\xff\xfe\xc3\x28" + data[30:]  # inside row 2
    path.write_bytes(damaged)
    log = MetricsLog(str(tmp_path))
    log.truncate_after(4)
    log.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3, 4]
    assert (tmp_path / "metrics.jsonl.damaged").read_bytes() == damaged
    assert "warning: 1 unreadable line(s)" in capsys.readouterr().out


def test_a_torn_last_row_is_dropped_quietly(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_rows(3) + b'{"step": 4, "lo')
    log = MetricsLog(str(tmp_path))
    log.truncate_after(3)
    log.close()
    assert len(path.read_text().splitlines()) == 3 and not (tmp_path / "metrics.jsonl.damaged").exists()
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"\xff\xfe", b"", b'{"sessions": [1, 2]}', b'{"sessions": [{"seconds": 3}]}',
                                     b'{"sessions": [{"seconds": {"train": 1}, "started": 0, "updated": 1, '
                                     b'"last_step": "x"}]}', b"[]"])
def test_a_damaged_ledger_starts_afresh_with_a_warning(tmp_path, capsys, content):
    (tmp_path / "goodput.json").write_bytes(content)
    ledger = Ledger(str(tmp_path))
    ledger.begin(4)
    assert ledger.update()["sessions"] == 1
    assert "goodput ledger" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"\xff\xfe{", b'{"host": 3}', b"[1]", b'{"host": "h", "pid": "x"}'])
def test_an_unreadable_lock_is_taken_over_once_it_is_seconds_old(tmp_path, content):
    lock = tmp_path / "train.lock"
    lock.write_bytes(content)
    with pytest.raises(WorkdirLocked, match="is unreadable and only seconds old"):
        WorkdirLock(str(tmp_path)).acquire()
    past = time.time() - 60  # left by a crash a minute ago
    os.utime(lock, (past, past))
    held = WorkdirLock(str(tmp_path)).acquire()
    assert json.loads(lock.read_bytes())["host"] == socket.gethostname()
    held.release()
