"""What the user sees of a run: progress lines, metrics.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile

from dit_jax import storage

# Peak dense bf16 TFLOP/s of one JAX device, by device_kind (lower case). A device is what
# jax.devices() lists: a whole chip on TPU v4 and later (v4 and v5p chips have two TensorCores that
# JAX drives as one device; v5p's device_kind is "TPU v5"), a TensorCore on v2/v3, a GPU.
PEAK_TFLOPS = {
    "tpu v2": 22.5, "tpu v3": 61.5, "tpu v4": 275.0, "tpu v5": 459.0, "tpu v5p": 459.0,
    "tpu v5 lite": 197.0, "tpu v5e": 197.0, "tpu v6 lite": 918.0, "tpu v6e": 918.0,
    # GPUs' device_kind carries the product name, e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB".
    "h100 pcie": 756.0, "h100": 989.0, "h200": 989.0, "a100": 312.0,
}


def peak_flops(device) -> float:
    """Exact device_kind first (so "tpu v5" does not take "tpu v5 lite"), then the longest name it contains."""
    kind = getattr(device, "device_kind", "").lower()
    if kind in PEAK_TFLOPS:
        return PEAK_TFLOPS[kind] * 1e12
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name in kind:
            return PEAK_TFLOPS[name] * 1e12
    return 0.0  # unknown (e.g. CPU): MFU is not reported


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def json_row(step: int, values: dict) -> str:
    """One strict-JSON line: NaN/Inf become null (bare NaN is not JSON and breaks other readers)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
    return json.dumps({"step": step, **clean}, allow_nan=False)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # e.g. a last line cut short by a crash


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch whenever it is installed (as it is beside the converters), only to
    accept torch tensors; that import adds 2-3 s to the start of every training process, on every
    host. The log writes floats, so torch is hidden while tensorboardX loads: `import torch` then
    fails there, which tensorboardX handles, and works again right after."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if enabled:
            self.jsonl = storage.TextAppender(storage.join(workdir, "metrics.jsonl"))
            self.events = EventsDir(storage.join(workdir, "tensorboard"))
            self.writer = summary_writer_class()(self.events.local)

    def print(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)

    def write(self, step: int, total: int, metrics: dict, eta_s: float) -> None:
        if not self.enabled:
            return
        parts = [f"step {step}/{total}", f"loss {metrics['loss']:.4f}"]
        if "mse" in metrics:
            parts.append(f"mse {metrics['mse']:.4f} vb {metrics.get('vb', 0.0):.4f}")
        parts.append(f"{metrics['img_per_s']:.1f} img/s")
        if "mfu" in metrics:
            parts.append(f"MFU {metrics['mfu']:.1%}")
        if metrics.get("input_wait_s", 0.0) >= 0.05:  # shown when it rounds to something
            parts.append(f"input wait {metrics['input_wait_s']:.1f} s")
        if metrics.get("checkpoint_s", 0.0) >= 0.05:
            parts.append(f"saving {metrics['checkpoint_s']:.1f} s")
        if "goodput" in metrics:
            parts.append(f"goodput {metrics['goodput']:.0%}")
        parts.append(f"ETA {_duration(eta_s)}")
        print(" | ".join(parts), file=sys.stdout, flush=True)
        self.jsonl.write(json_row(step, metrics) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            if k != "step" and math.isfinite(v):  # the non-finite loss stops the run with its own message
                self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.flush()
        self.events.sync()

    def scalars(self, step: int, values: dict) -> None:
        """Extra metrics (e.g. evaluation scores) beside the loss: metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        self.jsonl.write(json_row(step, values) + "\n")
        self.jsonl.flush()
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()
        self.events.sync()

    def truncate_after(self, step: int) -> None:
        """Drop the rows past `step` (and any torn line): on resume from a checkpoint at `step` those
        steps run again, and metrics.jsonl keeps one row per step."""
        if not self.enabled:
            return
        self.jsonl.close()
        path = self.jsonl.path
        data = path.read_bytes() if path.exists() else b""
        lines = data.decode("utf-8", errors="replace").splitlines()
        kept = [line for line in lines if (s := _step_of(line)) is not None and s <= step]
        unreadable = [line for line in lines[:-1] if _step_of(line) is None]  # the last may be torn by a crash
        if unreadable:  # damaged, not torn: kept aside for whoever wants the old rows
            storage.write_bytes_atomic(f"{path}.damaged", data)
            print(f"warning: {len(unreadable)} unreadable line(s) of {path} dropped (the file as it was is kept "
                  f"as {path}.damaged)", flush=True)
        if len(kept) != len(lines):
            storage.write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())
        self.jsonl = storage.TextAppender(path)

    def close(self) -> None:
        if self.enabled and self.writer is not None:
            self.jsonl.close()
            self.writer.close()
            self.events.close()
            self.writer = None


class EventsDir:
    """Where TensorBoard event files are written: the run's directory itself when it is local;
    for a bucket, a local directory whose files are copied up after every flush.

    tensorboardX has its own gs:// writer, but it goes through a second client
    (google-cloud-storage) with its own credentials lookup, and it uploads again from `__del__`, so
    a process could hang at exit retrying an upload. Copying up through `storage` keeps one path
    layer; an event file is small, so rewriting it whole per flush is cheap.
    """

    def __init__(self, path: str):
        self.remote = path if storage.is_uri(path) else None
        self.local = tempfile.mkdtemp(prefix="dit_jax-events-") if self.remote else path

    def sync(self) -> None:
        if self.remote:
            storage.upload_tree(self.local, self.remote)

    def close(self) -> None:
        if self.remote:
            self.sync()
            shutil.rmtree(self.local, ignore_errors=True)
