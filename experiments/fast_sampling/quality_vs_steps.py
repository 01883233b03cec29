"""Sample quality against the number of sampling steps, for a trained demo run (either objective).

For each (sampler, steps) it draws the demo evaluation's guided EMA samples (the run's
config.evals.digits: 500 samples, guidance 2.0 on all channels, labels 0..9 cycling, batch b's noise
from fold_in(PRNGKey(seed + 2), b's first index): the same labels and noise for every sampler),
scores them with the demo's digit classifier (class accuracy, Frechet distance), counts the model
evaluations per sample (NFE; a guided evaluation runs the network on the conditional and the null
row together and counts once) and times the sampler, then writes OUT/results.json, OUT/table.md and
OUT/quality_vs_nfe.png (Frechet distance against NFE, log x axis, one line per sampler).

    python experiments/fast_sampling/quality_vs_steps.py --workdir /tmp/q/ddpm --out experiments/fast_sampling
    python experiments/fast_sampling/quality_vs_steps.py --workdir /tmp/q/sit --out experiments/flow_matching \\
        --include experiments/fast_sampling/results.json

Wall time per image is the time of sampling every batch after the first (fetched to the host)
divided by their number of images: the first batch compiles the sampler, and its time (compilation
included) is recorded apart. --repeats N samples everything N - 1 more times, compiled, and reports
the median. The machine's load average
is recorded beside each timing, as the machine may be shared. Results already in OUT/results.json
for the same run and step are kept (a rerun continues); --redo measures them again.

--include adds the rows of another results.json (e.g. the other objective's run) to the table and
the plot without measuring them. Needs matplotlib for the plot (the `experiments` extra).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# The grids of the two write-ups. DDPM: steps are a respacing for ddpm/ddim (the reference's uniform
# respacing) and the number of model evaluations for the solvers. SiT: steps is SiT's num_steps (the
# time grid's points); dopri5 is adaptive and runs once (its steps value is ignored).
DDPM_STEPS = (5, 10, 15, 20, 25, 50, 100, 250)
DEFAULT_GRID = {
    "ddpm": {name: DDPM_STEPS for name in ("ddpm", "ddim", "dpm++2m", "dpm++3m", "unipc")},
    "sit": {"euler": (5, 10, 25, 50, 125), "heun": (5, 10, 25, 50, 125), "dopri5": (2,), "sde-euler": (25, 125)},
    "meanflow": {"meanflow": (1, 2, 4)},  # steps = NFE; guidance is trained in (cfg_scale not applied)
}


def parse_grid(text: str) -> dict[str, tuple[int, ...]]:
    """'ddpm:5,10;dpm++2m:20' -> {'ddpm': (5, 10), 'dpm++2m': (20,)}."""
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, steps = part.partition(":")
        if not sep or not steps:
            raise ValueError(f"--grid entries are SAMPLER:STEPS[,STEPS...], got {part!r}")
        try:
            grid[name.strip()] = tuple(int(s) for s in steps.split(","))
        except ValueError:
            raise ValueError(f"--grid steps must be integers, got {steps!r} in {part!r}") from None
    return grid


def load(workdir: str):
    """(Run, EMA params, training step, the digits evaluator's section) of a finished run directory."""
    from dit_jax.train.checkpoint import load_run
    from dit_jax.run import make_run
    params, stored, step = load_run(workdir)
    config = ml_collections.ConfigDict(stored)
    return make_run(config), params, step, config.evals.digits


def nfe_of(objective: str, sampler: str, steps: int, settings) -> int | None:
    """Model evaluations per sample of a fixed-step sampler (None for dopri5, counted at run time)."""
    from dit_jax.transport.integrators import model_evaluations
    if objective in ("ddpm", "meanflow"):
        return steps  # respaced DDPM/DDIM: one per respaced step; the solvers: `steps` evaluations
    if sampler == "dopri5":
        return None
    if sampler.startswith("sde-"):
        return model_evaluations(sampler[4:], steps, sde=True, last_step=settings.last_step)
    return model_evaluations(sampler, steps)


def dopri5_counter(run, settings):
    """A jitted fn(params, labels, key) -> (samples, NFE) for SiT's dopri5 with `settings`.

    The sampler builder returns only samples; this one builds the same guided network as
    sampling/run_sampler.py make_sampler (the demo's all-channel guidance, no interval) and asks
    sample_ode for its evaluation count. The caller checks that its samples equal the builder's,
    which shows the count belongs to the same solve.
    """
    from dit_jax.diffusion.ancestral import guidance_channels, guided_model_fn
    from dit_jax.models.dit import DiT
    from dit_jax.transport import integrators as sit
    from dit_jax.transport.guidance import split_learned_sigma
    if settings.cfg_interval is not None or settings.cfg_scale <= 1.0:
        raise ValueError("the dopri5 counter covers guided sampling without an interval (the demo's evaluation)")
    model, dit = run.model, DiT(run.model)
    channels = guidance_channels(settings.cfg_mode, model.in_channels)

    @jax.jit
    def count(params, labels, key):
        def class_model_fn(x, t, y):
            return split_learned_sigma(dit.apply({"params": params}, x, t, y), model.in_channels)
        model_fn = guided_model_fn(class_model_fn, labels, model.null_class, settings.cfg_scale, channels)
        init_key, _ = jax.random.split(key)
        x_T = jax.random.normal(init_key, (labels.shape[0], model.input_size, model.input_size, model.in_channels),
                                jnp.float32)
        return sit.sample_ode(run.objective, model_fn, x_T, method="dopri5", atol=settings.atol,
                              rtol=settings.rtol, return_nfe=True)
    return count


def measure(run, params, section, sampler: str, steps: int, classifier, repeats: int = 1) -> dict:
    """One row: scores, NFE and timings of `sampler` at `steps` on the evaluator `section`'s samples."""
    from dit_jax.metrics.digits_classifier import score_samples
    from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler, objective_kind
    from dit_jax.train.evaluators import Evaluator, ema_samples
    objective = objective_kind(run.objective)
    section = ml_collections.ConfigDict(section.to_dict())
    section.update(sampler=sampler, steps=str(steps))
    settings = SamplerSettings.from_config(section, run.config.transport if objective == "sit" else None)
    evaluator = Evaluator("quality", section, build_sampler(run, settings))

    # ema_samples (the demo evaluation's loop) reports after each batch: the first batch includes
    # compiling the sampler, the time of the others is the sampler's after compilation.
    marks = []
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    images, labels = ema_samples(run, evaluator, params,
                                 progress=lambda done, total: marks.append((done, time.perf_counter())))
    first_done, first_time = marks[0]
    if len(images) == first_done:
        raise ValueError("timing after compilation needs more than one batch: num_samples > batch_size")
    seconds = [(time.perf_counter() - first_time) / (len(images) - first_done)]
    loads = [(load_before, os.getloadavg()[0])]
    for _ in range(repeats - 1):  # more timings of every batch, the sampler compiled
        t1 = time.perf_counter()
        ema_samples(run, evaluator, params)
        seconds.append((time.perf_counter() - t1) / len(images))
        loads.append((loads[-1][1], os.getloadavg()[0]))
    scores = score_samples(np.clip(images, -1, 1), labels, classifier)
    row = dict(objective=objective, sampler=sampler, steps=steps, settings=settings.describe(),
               nfe=nfe_of(objective, sampler, steps, settings),
               class_accuracy=float(scores["class_accuracy"]), frechet_distance=float(scores["frechet_distance"]),
               num_samples=int(scores["num_samples"]), batch_size=int(section.batch_size),
               seconds_per_image=float(np.median(seconds)), seconds_per_image_all=seconds,
               first_batch_seconds=first_time - t0, load_average=loads)
    if objective == "sit" and sampler == "dopri5":
        row.update(dopri5_nfe(run, params, section, settings, images))
    return row


def dopri5_nfe(run, params, section, settings, images: np.ndarray) -> dict:
    """dopri5's NFE per batch (its step size is chosen over the whole batch), and the check that the
    counter's samples are the builder's."""
    count = dopri5_counter(run, settings)
    labels = np.arange(section.num_samples) % run.model.num_classes
    per_batch, diffs = [], []
    for i in range(0, len(labels), section.batch_size):
        x, nfe = count(params, jnp.asarray(labels[i:i + section.batch_size], jnp.int32),
                       jax.random.fold_in(jax.random.PRNGKey(run.config.seed + 2), i))
        per_batch.append(int(nfe))
        diffs.append(float(np.max(np.abs(np.asarray(x) - images[i:i + section.batch_size]))))
    return dict(nfe=float(np.mean(per_batch)), nfe_per_batch=per_batch, counter_max_abs_diff=max(diffs))


def fmt_nfe(row) -> str:
    nfe = row["nfe"]
    if row["sampler"] == "dopri5":
        return f"{nfe:g} (mean of {', '.join(map(str, row['nfe_per_batch']))})"
    return str(nfe)


def steps_label(row) -> str:
    return "adaptive" if row["sampler"] == "dopri5" else str(row["steps"])


def table(rows: list[dict], runs: dict) -> str:
    lines = ["| objective | sampler | steps | NFE | class accuracy | Frechet distance | ms / image | "
             "first batch, s (with compile) | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        load = max(max(p) for p in r["load_average"])
        lines.append(f"| {r['objective']} | {r['sampler']} | {steps_label(r)} | {fmt_nfe(r)} | "
                     f"{r['class_accuracy']:.3f} | {r['frechet_distance']:.2f} | {1e3 * r['seconds_per_image']:.2f} | "
                     f"{r['first_batch_seconds']:.1f} | {load:.1f} |")
    notes = [f"- {obj} run: `{info['workdir']}` at training step {info['step']}, {info['num_samples']} samples, "
             f"{info['settings']}" for obj, info in runs.items()]
    return "\n".join(lines + [""] + notes) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.8))
    lines = {}
    for r in rows:
        lines.setdefault((r["objective"], r["sampler"]), []).append(r)
    for (objective, sampler), rs in lines.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in rs]
        style = dict(marker="o" if objective == "ddpm" else "s", linestyle="-" if objective == "ddpm" else "--",
                     label=f"{objective}: {sampler}")
        if len(rs) == 1:
            style.update(marker="*", markersize=12)
        ax_fd.plot(nfe, [r["frechet_distance"] for r in rs], **style)
        ax_acc.plot(nfe, [r["class_accuracy"] for r in rs], **style)
    for ax, what in ((ax_fd, "Frechet distance (digit classifier features; lower is better)"),
                     (ax_acc, "class accuracy of guided samples")):
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations per sample (NFE)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_acc.legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from dit_jax import platforms
    platforms.choose()  # CPU alone where there is no accelerator (no libtpu probing)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a finished `dit-jax train` run directory")
    p.add_argument("--out", required=True, help="directory for results.json, table.md, quality_vs_nfe.png")
    p.add_argument("--grid", default="", help="SAMPLER:STEPS,...;SAMPLER:... (default: the objective's grid)")
    p.add_argument("--num-samples", type=int, default=0, help="default: the run's evals.digits.num_samples (500)")
    p.add_argument("--repeats", type=int, default=1, help="timings per row (the median is reported)")
    p.add_argument("--include", action="append", default=[], help="another results.json to show beside these")
    p.add_argument("--redo", action="store_true", help="measure rows already in OUT/results.json again")
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        print(f"error: no run at --workdir {args.workdir!r} (train one first: dit-jax train --workdir DIR)",
              file=sys.stderr)
        return 2
    if args.num_samples == 1 or args.num_samples < 0 or args.repeats < 1:
        print("error: --num-samples must be >= 2 (a compiling batch and a timed one) and --repeats >= 1",
              file=sys.stderr)
        return 2
    try:
        grid_override = parse_grid(args.grid)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from dit_jax.metrics.digits_classifier import load_classifier
    from dit_jax.sampling.run_sampler import SamplerSettings, objective_kind
    run, params, step, section = load(args.workdir)
    objective = objective_kind(run.objective)
    if section.kind != "digits":
        print(f"error: {args.workdir} is not a digits demo run (its evals.digits is off)", file=sys.stderr)
        return 2
    if args.num_samples:
        section.num_samples = args.num_samples
        section.batch_size = min(section.batch_size, max(1, args.num_samples // 2))  # two batches at least: timing
    grid = grid_override or DEFAULT_GRID[objective]
    for name, steps_list in grid.items():  # reject a bad grid before any sampling
        for steps in steps_list:
            settings = SamplerSettings(sampler=name, steps=str(steps))
            problems = settings.problems(run.objective)
            if problems:
                print(f"error: {name}:{steps}: {'; '.join(problems)}", file=sys.stderr)
                return 2

    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {"runs": {}, "rows": []}
    settings0 = SamplerSettings.from_config(section, run.config.transport if objective == "sit" else None)
    info = dict(workdir=os.path.abspath(args.workdir), step=int(step), num_samples=int(section.num_samples),
                settings=f"guidance {settings0.cfg_scale} ({settings0.cfg_mode} channels), seed "
                         f"{run.config.seed} (the demo evaluation's labels and noise)")
    scores_path = os.path.join(args.workdir, "demo_scores.json")
    if os.path.exists(scores_path):  # the run's own final evaluation, to compare with its sampler's row
        info["demo_scores"] = json.load(open(scores_path))
        info["demo_evaluation_sampler"] = settings0.describe()
    if results["runs"].get(objective) != info:  # another run or sample count: start this objective over
        results["rows"] = [r for r in results["rows"] if r["objective"] != objective]
    results["runs"][objective] = info
    results["machine"] = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                              cpus=os.cpu_count(), jax=jax.__version__, backend=jax.default_backend(),
                              devices=[str(d) for d in jax.devices()])
    classifier = load_classifier()

    def done(name, steps):
        return any(r["objective"] == objective and r["sampler"] == name and r["steps"] == steps
                   for r in results["rows"])

    # Cheapest first (dopri5 counted as 100 evaluations), so that an interrupted run has every sampler's
    # few-step rows.
    todo = sorted(((name, steps) for name, steps_list in grid.items() for steps in steps_list),
                  key=lambda p: nfe_of(objective, *p, settings0) or 100)
    for name, steps in todo:
        if done(name, steps) and not args.redo:
            continue
        print(f"{objective} {name} steps {steps} ...", flush=True)
        row = measure(run, params, section, name, steps, classifier, repeats=args.repeats)
        row["measured_at"] = datetime.datetime.now().isoformat(timespec="seconds")
        results["rows"] = [r for r in results["rows"] if not (r["objective"] == objective and
                                                              r["sampler"] == name and r["steps"] == steps)]
        results["rows"].append(row)
        print(f"  NFE {fmt_nfe(row)}: class accuracy {row['class_accuracy']:.3f}, Frechet distance "
              f"{row['frechet_distance']:.2f}, {1e3 * row['seconds_per_image']:.2f} ms/image "
              f"(first batch {row['first_batch_seconds']:.1f} s)", flush=True)
        with open(results_path, "w") as f:  # after every row: an interrupted run keeps what it measured
            json.dump(results, f, indent=1)

    rows = [r for r in results["rows"] if r["objective"] == objective]
    runs = {objective: info}
    for path in args.include:
        other = json.load(open(path))
        rows += [r for r in other["rows"] if r["objective"] != objective]
        runs.update({k: v for k, v in other["runs"].items() if k != objective})
    order = {name: i for i, name in enumerate(list(DEFAULT_GRID["sit"]) + list(DEFAULT_GRID["ddpm"]))}
    rows.sort(key=lambda r: (r["objective"] != objective, order.get(r["sampler"], 99), r["steps"]))
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table(rows, runs))
    title = (", ".join(f"{k} run at step {v['step']}" for k, v in runs.items())
             + ": guided EMA samples of the digits demo")
    plot(rows, os.path.join(args.out, "quality_vs_nfe.png"), title)
    print(f"wrote {results_path}, table.md and quality_vs_nfe.png in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
