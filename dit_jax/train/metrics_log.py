"""What the user sees of a run: progress lines, metrics.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import sys

# Peak dense bf16 FLOP/s per device for MFU. H100 uses the reference anchors' 790 TFLOP/s so MFU
# numbers compare like for like with the PyTorch measurements.
PEAK_TFLOPS = {"h100": 790.0, "h200": 790.0, "a100": 312.0, "tpu v3": 61.5, "tpu v4": 137.5, "tpu v5 lite": 197.0,
               "tpu v5e": 197.0, "tpu v5p": 229.5, "tpu v6 lite": 918.0}


def peak_flops(device) -> float:
    kind = getattr(device, "device_kind", "").lower()
    for name, tflops in PEAK_TFLOPS.items():
        if name in kind:
            return tflops * 1e12
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


class MetricsLog:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
            self.jsonl = open(self.jsonl_path, "a")
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

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
        parts.append(f"ETA {_duration(eta_s)}")
        print(" | ".join(parts), file=sys.stdout, flush=True)
        self.jsonl.write(json_row(step, metrics) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            if k != "step" and math.isfinite(v):  # the non-finite loss stops the run with its own message
                self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.flush()

    def scalars(self, step: int, values: dict) -> None:
        """Extra metrics (e.g. evaluation scores) beside the loss: metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        self.jsonl.write(json_row(step, values) + "\n")
        self.jsonl.flush()
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def truncate_after(self, step: int) -> None:
        """Drop the rows past `step` (and any torn line): on resume from a checkpoint at `step` those
        steps run again, and metrics.jsonl keeps one row per step."""
        if not self.enabled:
            return
        self.jsonl.close()
        with open(self.jsonl_path) as f:
            lines = f.read().splitlines()
        kept = [line for line in lines if (s := _step_of(line)) is not None and s <= step]
        if len(kept) != len(lines):
            tmp = self.jsonl_path + ".tmp"
            with open(tmp, "w") as f:
                f.write("".join(line + "\n" for line in kept))
            os.replace(tmp, self.jsonl_path)
        self.jsonl = open(self.jsonl_path, "a")

    def close(self) -> None:
        if self.enabled and self.writer is not None:
            self.jsonl.close()
            self.writer.close()
            self.writer = None
