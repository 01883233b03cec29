"""The speed ratios of `dit-jax benchmark`'s rows to the PyTorch reference's, and MFU: plain Python and
NumPy, so that tools/bench_table.py (one process per group of tools/device_benchmark.sh) computes them
without importing jax (about a CPU second a process).
"""

from __future__ import annotations

import numpy as np

# Interleaved repetitions whose speed ratios spread by more than this (max - min over the median) are
# flagged in the table: the load on the machine changed under the measurement.
WIDE_SPREAD = 0.25


def paired_ratio(ours_s: list[float], theirs_s: list[float]) -> dict:
    """The speed ratio of interleaved repetitions (ours, theirs, ours, theirs, ...) of the same work.

    Each pair gives theirs/ours seconds (our speed over theirs); the median of the pairs is robust to a
    burst of load that hits a few repetitions, and the pairs' range says how far to trust it.
    """
    if len(ours_s) != len(theirs_s) or not ours_s:
        raise ValueError(f"paired_ratio needs as many of our repetitions as theirs, got {len(ours_s)} and {len(theirs_s)}")
    ratios = sorted(t / o for o, t in zip(ours_s, theirs_s))
    median = float(np.median(ratios))
    return dict(vs_torch=median, vs_torch_min=ratios[0], vs_torch_max=ratios[-1], vs_torch_pairs=len(ratios),
                vs_torch_wide=(ratios[-1] - ratios[0]) / median > WIDE_SPREAD)


def add_ratios(rows: list[dict], peak_flops_per_device: float, num_devices: int) -> None:
    """MFU of every timed row and each JAX row's ratio to the PyTorch reference.

    A JAX row that carries `paired_s` (its own and the reference's seconds of interleaved repetitions,
    {"jax": [...], "torch": [...]}) gets the median paired ratio and its spread; any other gets its img/s
    per device over the best PyTorch row of its kind and batch (timed at another moment, so under
    another load on a shared machine).
    """
    for r in rows:
        if r.get("img_s") and peak_flops_per_device and r["kind"] != "input":
            devices = num_devices if r["impl"] == "jax" and r["kind"] == "train" else 1
            r["mfu"] = r["img_s"] * r["flops_per_image"] / (peak_flops_per_device * devices)
    for r in rows:
        if r["impl"] != "jax" or not r.get("img_s") or r["kind"] == "input":
            continue
        if r.get("paired_s"):
            # Per device: each of our devices runs the batch the reference runs on its one device in the
            # same seconds, so the ratio of seconds is the ratio of img/s per device.
            r.update(paired_ratio(r["paired_s"]["jax"], r["paired_s"]["torch"]))
            continue
        per_device = r["img_s"] / (num_devices if r["kind"] == "train" else 1)
        best = max((t["img_s"] for t in rows if t["impl"] == "torch" and t.get("img_s") and t["kind"] == r["kind"]
                    and t["batch"] == r["batch"]), default=None)
        if best:
            r["vs_torch"] = per_device / best


def format_ratio(r: dict) -> tuple[str, str]:
    """(ratio, spread) cells: '0.95x' and, for interleaved repetitions, '0.88-1.02' (+ ' WIDE')."""
    if r.get("vs_torch") is None:
        return "-", ""
    if r.get("vs_torch_pairs") is None:
        return f"{r['vs_torch']:.2f}x", ""
    spread = f"{r['vs_torch_min']:.2f}-{r['vs_torch_max']:.2f} n={r['vs_torch_pairs']}"
    return f"{r['vs_torch']:.2f}x", spread + (" WIDE" if r["vs_torch_wide"] else "")
