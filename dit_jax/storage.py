"""Run-directory paths that are local or cloud URIs (gs://bucket/run), through one layer.

Every file a run writes or reads (checkpoints, metrics.jsonl, TensorBoard events, sample grids,
score files, weights directories, sampling and extraction shards) goes through `resolve`, so a
workdir may be `runs/x` or `gs://bucket/x`. `os.path.abspath` would turn `gs://b/x` into the local
directory `./gs:/b/x`; `os.makedirs` and `open` cannot reach a bucket at all.
"""

from __future__ import annotations

import os

from etils import epath


def is_uri(path) -> bool:
    """True for `scheme://...` paths (gs://, s3://, ...), which are never made absolute locally."""
    return "://" in str(path)


def resolve(path) -> epath.Path:
    """A local path made absolute (with ~ expanded), or a URI kept as it is."""
    s = os.fspath(path) if not isinstance(path, epath.Path) else str(path)
    return epath.Path(s if is_uri(s) else os.path.abspath(os.path.expanduser(s)))


def join(base, *parts: str) -> str:
    """`base/part/...` as a string, local or URI."""
    return str(resolve(base).joinpath(*parts))


def makedirs(path) -> epath.Path:
    p = resolve(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def write_bytes_atomic(path, data: bytes) -> None:
    """Write a whole file so that readers see it complete or not at all.

    Locally: a temporary file renamed over the target. On object stores an object appears only
    when its upload completes, so one write is already atomic.
    """
    p = resolve(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_uri(p):
        p.write_bytes(data)
        return
    tmp = p.parent / f".{p.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, p)
