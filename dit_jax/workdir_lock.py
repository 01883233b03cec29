"""One training per workdir: a lock file WORKDIR/train.lock naming its holder, with a heartbeat.
(The same lock keeps a second `dit-jax sample --num-samples` off an output: OUT.shards/sample.lock.)

Two trainings on one workdir would overwrite each other's checkpoints and interleave
metrics.jsonl, so the second is refused. A lock left by a crash (kill -9, a lost machine) is taken
over when it is provably stale: its holder ran on this host and that process is gone, or its
heartbeat (rewritten every minute by the holder) is older than `stale_after_s`.

Locally the lock is created with O_EXCL and a stale one is renamed away before retaking it, so
of two processes racing for it exactly one wins. Object stores (gs://) have no exclusive create
through this path layer: the owner writes its token and reads it back after a pause, the usual
best effort there. In a multi-host run only process 0 takes the lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from dit_jax import storage

LOCK_NAME = "train.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 10 * 60.0
# A holder writes its record in the same call that creates the lock (and rewrites it atomically), so a
# lock still unreadable after this many seconds was damaged (a crash, a full disk), not being written.
UNREADABLE_GRACE_S = 5.0


class WorkdirLocked(ValueError):
    """Another training holds the workdir."""


class WorkdirUnusable(ValueError):
    """The workdir cannot be made or written (bad input or environment: exit 2, not a crash to retry)."""


def workdir_problem(workdir: str) -> str | None:
    """Why `workdir` cannot be a run directory, found without writing (empty, a regular file, below a
    regular file), or None. Permissions and read-only filesystems show when the lock is written."""
    if not workdir:
        return "--workdir is empty: name a directory for the run"
    if storage.is_uri(workdir):
        return None
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--workdir {workdir} is a regular file, not a directory: name a directory for the run"
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"--workdir {workdir} is below {parent}, which is a regular file, not a directory: fix the path"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkdirLock:
    """`name`: the lock file in `workdir`; `holder`: what holds it, for the refusal ("another training")."""

    def __init__(self, workdir: str, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S,
                 name: str = LOCK_NAME, holder: str = "training", advice: str = "use another --workdir"):
        self.workdir = workdir
        self.name, self.holder, self.advice = name, holder, advice
        self.path = storage.resolve(storage.join(workdir, name))
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread = None

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "heartbeat": time.time()}).encode()

    def _read(self) -> dict | None:
        try:
            record = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # half-written by a holder that died while creating it: judged by its age below
        try:  # a damaged record that still parses is as unreadable as one that does not
            int(record["pid"]), float(record["heartbeat"])  # values, not truth: a heartbeat may be 0.0
            return record if isinstance(record["host"], str) else {}
        except (TypeError, KeyError, ValueError, OverflowError):
            return {}

    def _stale(self, holder: dict) -> bool:
        if not holder:
            try:
                age = time.time() - self.path.stat().mtime
            except (FileNotFoundError, AttributeError):
                return True
            return age > min(UNREADABLE_GRACE_S, self.stale_after_s)
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
            return True
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_after_s

    def _create_local(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._record())
        return True

    def _create_remote(self) -> bool:
        if self.path.exists():
            return False
        self.path.write_bytes(self._record())
        time.sleep(2.0)  # a racing writer's object would have replaced ours by now
        return (self._read() or {}).get("token") == self.token

    def acquire(self) -> "WorkdirLock":
        from dit_jax.exit_codes import permanent_os_error
        problem = workdir_problem(self.workdir)
        if problem:
            raise WorkdirUnusable(problem)
        create = self._create_remote if storage.is_uri(self.path) else self._create_local
        for _ in range(3):
            try:
                storage.makedirs(self.workdir)
                created = create()
            except OSError as e:  # the first write into the directory: its permissions show here
                reason = permanent_os_error(e)
                if reason is None:
                    raise
                raise WorkdirUnusable(f"{self.workdir} cannot be written ({reason})") from None
            if created:
                self._start_heartbeat()
                return self
            holder = self._read()
            if holder is None:
                continue  # released meanwhile
            if not holder and not self._stale(holder):
                raise WorkdirLocked(f"the lock {self.path} of {self.workdir} is unreadable and only seconds old "
                                    f"(another {self.holder} starting?): rerun in a few seconds, or {self.advice}")
            if not self._stale(holder):
                raise WorkdirLocked(
                    f"{self.workdir} is in use by another {self.holder} (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, lock {self.path}): wait for it to finish or {self.advice}. "
                    f"If that process is gone, delete the lock file (it is also taken over by itself "
                    f"{self.stale_after_s / 60:.0f} minutes after its last heartbeat)")
            self._take_over_stale()
        raise WorkdirLocked(f"could not take the lock {self.path}: another process is racing for it")

    def _take_over_stale(self) -> None:
        """Rename the stale lock away first: only one of several racing processes succeeds."""
        aside = self.path.parent / f"{self.name}.stale-{self.token}"
        try:
            self.path.rename(aside)
        except (FileNotFoundError, OSError):
            return
        aside.unlink()

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat_s):
                if (self._read() or {}).get("token") != self.token:
                    return  # taken over (we were judged stale): never overwrite the new holder
                storage.write_bytes_atomic(self.path, self._record())
        self._thread = threading.Thread(target=beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if (self._read() or {}).get("token") == self.token:
            self.path.unlink()

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class _NotHeld:
    def release(self) -> None:
        pass


def take(workdir: str, **lock_args):
    """Process 0 takes the workdir's lock (released by `.release()`); every process raises
    WorkdirLocked if it was refused, so that no host of a multi-host run goes on alone.
    `lock_args`: WorkdirLock's name/holder/advice (another lock than the training's)."""
    import jax
    held, error = _NotHeld(), None
    if jax.process_index() == 0:
        try:
            held = WorkdirLock(workdir, **lock_args).acquire()
        except (WorkdirLocked, WorkdirUnusable) as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils
        if multihost_utils.broadcast_one_to_all(np.int32(error is not None)) and error is None:
            error = WorkdirLocked(f"process 0 could not take the lock of {workdir} (see its message)")
    if error is not None:
        raise error
    return held
