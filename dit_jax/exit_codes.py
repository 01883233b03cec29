"""What a `dit-jax` command's exit code tells a user or a retry loop, and the exceptions that carry each code.

    0   finished: total_steps reached (and the final evaluation written); any other command: done
    2   bad input or environment: the config, a flag or a path is wrong, a file the command reads is
        damaged or of another kind (safetensors, Orbax/TensorStore, npz, pickle, JSON: the line names
        the file), a place cannot be written (permission, read-only filesystem, a file where a
        directory should be, a full disk: the line names the path), a remote store cannot be reached
        or refuses access (the line names the endpoint and the cause), or device memory is too small;
        nothing was lost, fix it and rerun: a rerun alone would fail the same way
    3   diverged: the loss became NaN or infinite; rerunning resumes into the same divergence
    75  preempted: a checkpoint was saved; rerun the same command to resume (EX_TEMPFAIL, "try again")
    130 interrupted (Ctrl-C), one line and no traceback; `sample --num-samples` keeps its shards and a
        rerun of the same command resumes (128 + SIGINT, as a shell reports it)
    1   any other failure (a crash with its traceback); the last regular checkpoint is intact, so a
        bounded number of reruns is reasonable (a lost host, a coordinator timeout)

Every error line is `error: ...` on stderr, one line. The launch recipes in tools/launch/ rerun on 75
(and, a few times, on 1) and stop on 0, 2 and 3. Code raises these exceptions where the event
happens; one place maps every exception to its line and code: `dit_jax.cli.main.error_line`.
"""

from __future__ import annotations

import errno
import os

FINISHED = 0
FAILED = 1
BAD_INPUT = 2
DIVERGED = 3
PREEMPTED = 75
INTERRUPTED = 130  # 128 + SIGINT


class BadInput(ValueError):
    """Bad input or environment (exit 2): the message names the file, flag or setting and the fix.

    A ValueError, so every place that maps ValueError to one `error:` line and exit 2 maps this too;
    readers of user files raise it (from the library's own exception) with the path in the message."""
    exit_code = BAD_INPUT


class RunStopped(Exception):
    """A training run ended before total_steps for a reason its exit code names."""
    exit_code = FAILED


class Preempted(RunStopped):
    """SIGTERM (a preemption notice) arrived; the checkpoint at `args[0]` is complete."""
    exit_code = PREEMPTED


class Diverged(RunStopped):
    """The loss is no longer finite."""
    exit_code = DIVERGED


def exit_code(error: BaseException) -> int | None:
    """The code for an exception that ends a run, or None for one the caller handles otherwise.

    FloatingPointError is what `jax_debug_nans` raises: a divergence as well.
    """
    if isinstance(error, RunStopped):
        return error.exit_code
    if isinstance(error, FloatingPointError):
        return DIVERGED
    return None


# OS errors that a rerun meets again until someone fixes the path, its permissions or the disk.
# Others (a dropped connection, a timeout: ConnectionError, TimeoutError) stay failures (1) to retry.
_PERMANENT = {
    errno.EACCES: "permission denied: choose a path you can write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a path you can write, or fix its permissions",
    errno.EROFS: "the filesystem is read-only: choose a path on a writable disk",
    errno.ENOTDIR: "a part of the path is a regular file, not a directory: fix the path",
    errno.EISDIR: "it is a directory where a file is expected: name a file",
    errno.EEXIST: "it exists (a file where a directory is expected?): choose another path",
    errno.ENOENT: "no such file or directory",
    errno.ENOSPC: "no space left on the device: free space there and rerun",
    errno.EDQUOT: "disk quota exceeded: free space there and rerun",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EFBIG: "the file is too large for that filesystem",
    errno.ELOOP: "too many levels of symbolic links",
}

_SAID = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def permanent_os_error(error: BaseException) -> str | None:
    """One line for an OSError that a rerun would meet again (bad path, permission, read-only or full
    disk), or None for any other error (transient or unknown: left to its traceback, exit 1)."""
    if isinstance(error, _SAID) and error.errno is None:  # raised here with a message that says what to do
        return str(error)
    if not isinstance(error, OSError) or error.errno not in _PERMANENT:
        return None
    where = error.filename if error.filename is not None else ""
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    if not where:  # raised with a message of its own (e.g. FileExistsError("... exists; ..."))
        return str(error)
    if error.errno == errno.EEXIST and os.path.isfile(str(error.filename)):  # os.makedirs through a file
        return f"{where} is a regular file where a directory is expected: fix the path"
    return f"{where}: {_PERMANENT[error.errno]}"


def out_of_memory(error: BaseException) -> str | None:
    """One line for a device out of memory (XLA's RESOURCE_EXHAUSTED): the same config on the same
    devices runs out again, so it is bad input (2), not a crash to retry."""
    text = str(error)
    if type(error).__name__ not in ("JaxRuntimeError", "XlaRuntimeError") or "RESOURCE_EXHAUSTED" not in text:
        return None
    first = " ".join(text.split())[:300]
    return (f"device memory exhausted ({first}): lower the batch per device, or set --config.model.remat=full "
            "or a larger --config.mesh.fsdp (`dit-jax compile` tries settings for a TPU topology)")
