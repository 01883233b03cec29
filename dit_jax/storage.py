"""Run-directory paths that are local or cloud URIs (gs://bucket/run), through one layer.

Every file a run writes or reads (checkpoints, metrics.jsonl, TensorBoard events, sample grids,
score files, weights directories, sampling and extraction shards) goes through `resolve`, so a
workdir may be `runs/x` or `gs://bucket/x`. `os.path.abspath` would turn `gs://b/x` into the local
directory `./gs:/b/x`; `os.makedirs` and `open` cannot reach a bucket at all.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import urllib.parse

from etils import epath


def _fresh_listings() -> None:
    # Several writers share a run directory (every host, and Orbax's tensorstore beside gcsfs), so
    # gcsfs's cached directory listings go stale: a shard or checkpoint another writer made would
    # read as missing. Listing afresh costs one request per listing.
    import fsspec
    fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)


_fresh_listings()


def is_uri(path) -> bool:
    """True for `scheme://...` paths (gs://, s3://, ...), which are never made absolute locally."""
    return "://" in str(path)


def _path(path) -> epath.Path:
    s = os.fspath(path) if not isinstance(path, epath.Path) else str(path)
    return epath.Path(s if is_uri(s) else os.path.abspath(os.path.expanduser(s)))


def resolve(path) -> epath.Path:
    """A local path made absolute (with ~ expanded), or a URI kept as it is, its store checked reachable
    (the path is about to be used)."""
    p = _path(path)
    if is_uri(p):
        check_reachable(str(p))
    return p


class StoreUnreachable(ConnectionError):
    """A remote store cannot be reached from this machine (no network, no name resolution): one line
    that names the URI, the endpoint and the cause (exit 2, dit_jax/exit_codes.py)."""


PROBE_SECONDS = 5.0
_PROBED: dict[str, str | None] = {}  # endpoint -> the cause it could not be reached, or None


def store_endpoint() -> str:
    """Where gs:// requests go: Google Cloud Storage, or the emulator STORAGE_EMULATOR_HOST names."""
    return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


def _connect_problem(endpoint: str) -> str | None:
    """Why a TCP connection to `endpoint` fails within PROBE_SECONDS, or None if it succeeds."""
    url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: list = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            result.append(None)
        except OSError as e:  # gaierror (no such name, no DNS), refused, unreachable, timed out
            cause = e.strerror or str(e) or type(e).__name__
            result.append(f"{host} {'is not resolved' if isinstance(e, socket.gaierror) else 'refuses'}: {cause}"
                          if isinstance(e, (socket.gaierror, ConnectionRefusedError)) else f"{host}:{port}: {cause}")
    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(PROBE_SECONDS + 1)
    return result[0] if result else f"{host}:{port}: no answer in {PROBE_SECONDS:g} s"


def check_reachable(uri: str) -> None:
    """Raise StoreUnreachable at once when a gs:// URI's store cannot be reached (once per endpoint and
    process), instead of the client's minute of retries and tracebacks."""
    if not uri.startswith(("gs://", "gcs://")):
        return
    endpoint = store_endpoint()
    if endpoint not in _PROBED:
        _PROBED[endpoint] = _connect_problem(endpoint)
    if _PROBED[endpoint] is not None:
        raise StoreUnreachable(f"{uri}: cannot reach the store at {endpoint} ({_PROBED[endpoint]}): check this "
                               "machine's network, or use a local path")


def join(base, *parts: str) -> str:
    """`base/part/...` as a string, local or URI."""
    return str(_path(base).joinpath(*parts))  # names a path, uses nothing: no probe


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
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except BaseException as e:  # a full disk, an interrupt: no partial temporary file stays behind
        if tmp.exists():
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(p)) from e  # the message names the file
        raise


def exists(path) -> bool:
    return resolve(path).exists()


def read_bytes(path) -> bytes:
    return resolve(path).read_bytes()


def rmtree(path) -> None:
    p = resolve(path)
    if p.exists():
        p.rmtree()


def upload_tree(local_dir: str, dest) -> None:
    """Copy every file under the local directory `local_dir` to `dest` (local or URI), streamed."""
    for root, _, names in os.walk(local_dir):
        for name in names:
            src = os.path.join(root, name)
            target = resolve(dest).joinpath(os.path.relpath(src, local_dir))
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as f, target.open("wb") as g:
                shutil.copyfileobj(f, g, 16 << 20)


def require_local(path, what: str) -> None:
    """Refuse a cloud URI where ArrayRecord files are read or written: ArrayRecord opens local
    files only, and a URI here would fail deep inside the data pipeline (or after hours of work)."""
    if path and is_uri(path):
        raise ValueError(
            f"{what} {path!r} is a cloud URI, but ArrayRecord datasets can only be opened from a local "
            "filesystem: mount the bucket with gcsfuse (gcsfuse --implicit-dirs BUCKET /mnt/BUCKET) and pass "
            "/mnt/BUCKET/..., or copy the dataset to local disk on every host (gsutil -m cp -r gs://... /data/) "
            "and pass that directory")


class TextAppender:
    """A text file that grows line by line (metrics.jsonl).

    Local files are appended to. An object store cannot append, so there the whole text is kept
    and the object rewritten on each flush; one line per logged step keeps it small (about 1 MB for
    a 400k-step run logged every 100 steps). Lines already in the object are kept on resume.
    """

    def __init__(self, path):
        self.path = resolve(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if is_uri(self.path):
            self._file = None
            self._text = self.path.read_text() if self.path.exists() else ""
        else:
            self._file = open(self.path, "a")

    def write(self, text: str) -> None:
        if self._file is None:
            self._text += text
        else:
            self._file.write(text)

    def flush(self) -> None:
        if self._file is None:
            write_bytes_atomic(self.path, self._text.encode())
        else:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
