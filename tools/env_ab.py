"""Time the benchmark's train step in processes that differ only by environment, interleaved.

    python tools/env_ab.py --model S/2 --rounds 8 --steps 2 \
        'DIT_JAX_CPU_MALLOC=0' '' 'XLA_FLAGS=--xla_cpu_use_onednn=true'

Each VARIANT ('NAME=VALUE;NAME=VALUE', '' for the environment as it is) gets its own process, which
prepares itself as `dit-jax` does, compiles the step of `dit-jax benchmark --model M --input-size 32
--batch B --dtype float32 --attention xla` once, and then waits. Every round asks each process in
turn for `--steps` steps (the order reversed every other round), so all variants see the same load
on a shared machine; a variant that needs a fresh process (allocator settings, XLA flags) can only
be compared this way. Prints, per variant, the median seconds per step, its speedup over the first
variant (the median of the rounds' ratios, with their range), the system time and minor page
faults per step, and the resident memory after the last round. `--program sample` times the
10-step guided DDPM sampler instead (batch 4, one call per unit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SAMPLE_STEPS = 10  # --program sample: the benchmark's CPU sampler row (docs/speed.md, "On CPU")


def worker(model: str, depth: int | None, batch: int, program: str) -> None:
    from dit_jax import cli
    cli.prepare_process()
    import flax.linen as nn
    import jax

    from dit_jax.benchmark import suite as bench
    from dit_jax.parallel.mesh import make_mesh_from_config
    from dit_jax.parallel.sharding import LOGICAL_RULES
    ns = argparse.Namespace(model=model, input_size=32, num_classes=None, in_channels=None, num_heads=None,
                            depth=depth, hidden_size=None, batch=batch, dtype="float32", attention="xla", remat=None,
                            scan=False, setting=[], config_args=[])
    from dit_jax.cli import benchmark as benchmark_command
    config, settings = benchmark_command.config_and_settings(ns)
    if program == "sample":
        _, _, sample, params, labels = bench.bench_sampler(config, settings[0], batch, SAMPLE_STEPS, 1.5)
        for i in range(2):  # compiles, then the heap reaches its peak
            jax.block_until_ready(sample(params, labels, jax.random.PRNGKey(i)))

        def calls(n):  # one after the other, as a sampling run's batches are
            for i in range(n):
                out = jax.block_until_ready(sample(params, labels, jax.random.PRNGKey(i)))
            return out
        serve(calls)
        return
    mesh = make_mesh_from_config(config.mesh)
    run = bench.bench_run(config, settings[0], mesh)
    data = bench.synthetic_batch(run)
    train_program, lowered = bench.lowered_step(run, data, None)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        step = lowered.compile()
        state = train_program.init(None)
        state, _, _ = bench._timed_steps(step, state, lambda: data, 2, 2, None)  # the heap reaches its peak

        def steps(n):
            nonlocal state
            state, _, loss = bench._timed_steps(step, state, lambda: data, n, 0, None)
            return loss
        serve(steps)


def serve(run_n) -> None:
    """Say "ready", then for each count n read from stdin run `run_n(n)` and print its time per unit."""
    import jax
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        jax.block_until_ready(run_n(n))
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"s": dt / n, "sys": (r1.ru_stime - r0.ru_stime) / n,
                          "faults": (r1.ru_minflt - r0.ru_minflt) / n, "rss_gb": resident_gb()}), flush=True)


def resident_gb() -> float:
    """The process's resident memory now, in GB (what the allocator settings trade for faults)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def _env(variant: str) -> dict:
    env = dict(os.environ)
    for item in filter(None, variant.split(";")):
        name, _, value = item.partition("=")
        env[name] = value
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", metavar="VARIANT")
    ap.add_argument("--model", default="S/2")
    ap.add_argument("--depth", type=int, default=None, help="blocks (default: the model's)")
    ap.add_argument("--program", choices=("train", "sample"), default="train",
                    help=f"the train step, or the {SAMPLE_STEPS}-step guided DDPM sampler (one call per unit)")
    ap.add_argument("--batch", type=int, default=None, help="default 8 for train, 4 for sample")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2,
                    help="steps (sampler calls, with --program sample) per variant per round")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.model, args.depth, args.batch, args.program)
        return 0
    if args.batch is None:
        args.batch = 8 if args.program == "train" else 4
    if not args.variants:
        ap.error("give at least one VARIANT ('' for the environment as it is)")
    procs = []
    try:
        command = [sys.executable, __file__, "--worker", "--model", args.model, "--batch", str(args.batch),
                   "--program", args.program] + (["--depth", str(args.depth)] if args.depth else [])
        for variant in args.variants:
            p = subprocess.Popen(command, env=_env(variant), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            procs.append(p)
            for line in p.stdout:
                if line.strip() == "ready":
                    break
            else:
                print(f"error: the process for {variant!r} exited before its step was ready "
                      f"(rerun it alone to see why)", file=sys.stderr)
                return 1
        results = [[] for _ in procs]
        for r in range(args.rounds):
            order = range(len(procs)) if r % 2 == 0 else reversed(range(len(procs)))
            for i in order:
                procs[i].stdin.write(f"{args.steps}\n")
                procs[i].stdin.flush()
                results[i].append(json.loads(procs[i].stdout.readline()))
    finally:
        for p in procs:
            p.kill()
    first = [x["s"] for x in results[0]]
    unit = "step" if args.program == "train" else "call"
    for variant, rs in zip(args.variants, results):
        times = [x["s"] for x in rs]
        ratios = [a / b for a, b in zip(first, times)]
        print(f"{statistics.median(times):6.3f} s/{unit}  {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f})  sys {statistics.median(x['sys'] for x in rs):.2f} s/{unit}  "
              f"faults {statistics.median(x['faults'] for x in rs):,.0f}/{unit}  resident {rs[-1]['rss_gb']:.2f} GB  "
              f"[{variant or 'as is'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
