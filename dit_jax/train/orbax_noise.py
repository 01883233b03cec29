"""Quiet the noise of a failed asynchronous Orbax save, which the loop reports in one line.

When a background save fails (a full disk), each of Orbax's writer threads logs the error with a
traceback, every tensorstore write still in flight reports "Event loop is closed" on its way
out, and asyncio later logs each unretrieved task: hundreds of lines for one error that
`checkpoint.check_writes` raises, with the step and the fix, as `error: ...`. Only those records
are dropped; everything else (Orbax's warnings included) still shows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

_ORBAX_DIR = f"{os.sep}orbax{os.sep}"


class _OrbaxErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and _ORBAX_DIR in record.pathname)


class _OrbaxTasks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # The task's repr names Orbax's coroutine, or only tensorstore's spec (a read that failed in
        # tensorstore before Orbax's own code saw it: seen under load, one run in several).
        message = record.getMessage()
        return not (record.levelno >= logging.ERROR and ("orbax" in message or "tensorstore" in message))


_ERRORS, _TASKS = _OrbaxErrors(), _OrbaxTasks()
_default_unraisablehook = sys.unraisablehook


def _unraisablehook(unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        _default_unraisablehook(unraisable)


def quiet_while_saving() -> None:
    """From opening a training manager until it closes."""
    logging.getLogger("absl").addFilter(_ERRORS)
    sys.unraisablehook = _unraisablehook


def restore() -> None:
    logging.getLogger("absl").removeFilter(_ERRORS)
    sys.unraisablehook = _default_unraisablehook


def quiet_after_failure() -> None:
    """The failed save's tasks are collected at exit, after the error was reported: stay quiet."""
    quiet_while_saving()
    logging.getLogger("asyncio").addFilter(_TASKS)


class _ReadOnlyNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


@contextlib.contextmanager
def quiet_read_only():
    """While a read-only CheckpointManager is made (sampling, exporting): it says so at warning level."""
    f = _ReadOnlyNotice()
    logging.getLogger("absl").addFilter(f)
    try:
        yield
    finally:
        logging.getLogger("absl").removeFilter(f)
