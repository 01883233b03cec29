"""The train step of MeanFlow beside SiT's on this machine, interleaved in one process.

    python tools/meanflow_step_time.py --model S/2 --batch 8 --rounds 3 --steps 2

Both steps are the ones training compiles (train/programs.py build_train_step) from configs/sit.py and
configs/meanflow.py at the same model size, float32, XLA attention, on a latent batch (the VAE's cost is
left out). Each round times `steps` steps of SiT, then of MeanFlow, so a machine whose load changes over
the run slows both alike; the median over rounds of each, and their ratio, are printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np


def build(config_name: str, model: str, batch: int):
    from dit_jax.configs.files import config_from_args, packaged_config
    from dit_jax.train.programs import build_train_step
    from dit_jax.run import make_run
    config = config_from_args([], packaged_config(config_name) + ":" + model, "meanflow_step_time")
    config.data.latents = "dataset"
    config.model.update(dtype="float32", attention="xla")
    config.batch_size = batch
    run = make_run(config, jax.devices()[:1], vae=None)
    program = build_train_step(run)
    state = program.init(None)
    m = run.model
    rng = np.random.default_rng(0)
    shape = (batch, m.input_size, m.input_size, m.in_channels)
    data = {"mean": rng.standard_normal(shape).astype(np.float16), "std": np.full(shape, 0.1, np.float16),
            "label": rng.integers(0, m.num_classes, batch).astype(np.int32)}
    t0 = time.perf_counter()
    state, metrics = program.step(state, data, None)
    jax.block_until_ready(metrics)
    return program.step, state, data, time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="S/2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    runs = {name: list(build(f"{name}.py", args.model, args.batch)) for name in ("sit", "meanflow")}
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, r in runs.items():
            step, state, data, _ = r
            t0 = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = step(state, data, None)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - t0) / args.steps)
            r[1] = state
    med = {name: statistics.median(v) for name, v in times.items()}
    print(json.dumps(dict(model=args.model, batch=args.batch, backend=jax.default_backend(),
                          first_step_s={n: round(r[3], 1) for n, r in runs.items()},
                          step_s={n: [round(t, 3) for t in v] for n, v in times.items()},
                          median_step_s={n: round(v, 3) for n, v in med.items()},
                          meanflow_over_sit=round(med["meanflow"] / med["sit"], 2))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
