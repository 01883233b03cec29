#!/usr/bin/env python
"""The PyTorch reference's rows of `dit-jax benchmark --torch`, for chosen modes only.

    python tools/bench_torch.py --train-modes tf32,bf16 [dit-jax benchmark flags] --out torch.json
    python tools/bench_torch.py --sample-modes tf32,bf16 [dit-jax benchmark flags] --out torch.json

`dit-jax benchmark --torch` times every mode of the reference in one process, then the JAX rows. A
device run with a wall-time budget per group (tools/device_benchmark.sh) wants a slow mode
(bf16+compile) on its own, so that one overrunning its budget costs only its own rows. The model,
batches, steps and sampler come from the same flags and config as `dit-jax benchmark`; the rows are
`dit_jax.benchmark.reference`'s, in a child process that imports no JAX backend (the two frameworks each
want the GPU's memory), with the FLOPs per image that `dit-jax benchmark` gives them. The JSON has the
layout of `dit-jax benchmark --out`, with no JAX rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def benchmark_config(flags: list[str]):
    """(config, settings, parsed benchmark args) as `dit-jax benchmark` builds them from the same flags."""
    from dit_jax.cli import benchmark, parse_args
    args = parse_args(["benchmark", *flags])
    config, settings = benchmark.config_and_settings(args)
    return config, settings, args


def modes(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [m for m in text.split(",") if m]
    bad = [m for m in chosen if m not in allowed]
    if bad:
        raise ValueError(f"{flag} {','.join(bad)}: the reference's modes are {','.join(allowed)}")
    return chosen


def child(request_path: str, out_path: str) -> int:
    """The reference's run() with the modes it was not asked for left out."""
    from dit_jax.benchmark import reference
    with open(request_path) as f:
        request = json.load(f)
    reference.TRAIN_MODES = tuple(m for m in reference.TRAIN_MODES if m in request["train_modes"])
    reference.SAMPLE_MODES = tuple(m for m in reference.SAMPLE_MODES if m in request["sample_modes"])
    rows = reference.run(request)
    with open(out_path, "w") as f:
        json.dump(rows, f, indent=2)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-modes", default="", help="comma-separated train modes (tf32, bf16, bf16+compile)")
    p.add_argument("--sample-modes", default="", help="comma-separated sampler modes (tf32, bf16)")
    p.add_argument("--out", required=True)
    own, flags = p.parse_known_args(argv)
    try:
        from dit_jax.benchmark import reference
        from dit_jax.models.dit import forward_macs
        from dit_jax.configs.base import to_dit_config
        train_modes = modes(own.train_modes, reference.TRAIN_MODES, "--train-modes")
        sample_modes = modes(own.sample_modes, reference.SAMPLE_MODES, "--sample-modes")
        config, settings, args = benchmark_config(flags)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = to_dit_config(config.model)
    # The reference DiT's constructor arguments, as dit_jax.benchmark.suite.torch_rows passes them.
    model = dict(input_size=m.input_size, patch_size=m.patch_size, in_channels=m.in_channels,
                 hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                 class_dropout_prob=m.class_dropout_prob, num_classes=m.num_classes, learn_sigma=m.learn_sigma)
    sample_steps = args.sample_steps if sample_modes else 0
    request = dict(reference=os.path.abspath(args.reference or os.path.join(
                       os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "torch_reference")),
                   model=model, train_batches=sorted({s.batch for s in settings}) if train_modes else [],
                   steps=args.steps, warmup=args.warmup, sample_batch=args.sample_batch, sample_steps=sample_steps,
                   cfg_scale=args.cfg_scale, sample_repeats=args.sample_repeats, train_modes=train_modes,
                   sample_modes=sample_modes)
    with tempfile.TemporaryDirectory() as tmp:
        req, out = os.path.join(tmp, "request.json"), os.path.join(tmp, "rows.json")
        with open(req, "w") as f:
            json.dump(request, f)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", req, out])
        if proc.returncode:
            print(f"error: the PyTorch reference failed (exit {proc.returncode}), above", file=sys.stderr)
            return 1
        with open(out) as f:
            rows = json.load(f)
    halves = 2 if args.cfg_scale > 1 else 1  # guidance runs the model on [x, x]
    for r in rows:  # as dit_jax.benchmark.suite.torch_rows
        r["flops_per_image"] = (3 * 2 * forward_macs(m) if r["kind"] == "train" else
                                2 * forward_macs(m) * sample_steps * halves)
    env = {k: rows[0][k] for k in ("torch", "torch_device")} if rows else {}
    report = dict(model=config.model.name, model_config=m.to_dict(), environment=env, steps=args.steps,
                  warmup=args.warmup, rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(own.out)), exist_ok=True)
    with open(own.out, "w") as f:
        json.dump(report, f, indent=2)
    for r in rows:
        print(f"{r['kind']:<7}torch {r['setting']:<24}" + (f"{r['img_s']:9.2f} img/s {r['step_ms']:9.2f} ms/step"
                                                           if r.get("img_s") else f"  {r.get('error')}"))
    print(f"wrote {own.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
