"""MeanFlow at 1, 2 and 4 network evaluations (NFE) on the digits demo, against SiT (Euler, Heun) and DDPM
(ancestral, DDIM, DPM-Solver++(2M)) at the same NFE, each scored at 2,000 and 4,000 training steps with the demo's digits
evaluator (500 EMA samples, the same labels and noise for every sampler; class accuracy and Frechet
distance in the digit classifier's features).

    nice -n 15 python experiments/meanflow_digits/compare.py --train --workdir /tmp/demos/mf \\
        --out experiments/meanflow_digits

The three runs are the demo recipe (configs/demo.py: 4,000 steps, batch 32, lr 1e-3, EMA 0.999) with
three objectives; only the checkpoints kept differ from the plain demo (every 500 steps, all kept, so
that step 2,000 can be scored), and SiT's and DDPM's runs have their own evaluation off (SiT's Heun at
100 steps, 198 NFE per sample, and DDPM's 100 steps were the costliest part of a run on a shared 2-core
machine; this script scores their checkpoints instead):

    meanflow  dit-jax train --config configs/meanflow.py:demo --workdir WORKDIR/meanflow --config.keep_checkpoints=10
    sit       dit-jax train --config.objective=sit --config.evals.digits.kind= --workdir WORKDIR/sit --config.keep_checkpoints=10
    ddpm      dit-jax train --config.evals.digits.kind= --workdir WORKDIR/ddpm --config.keep_checkpoints=10

--train trains the runs that are missing (one after another); --run NAME=DIR scores a run trained
elsewhere with the same command (e.g. the REPA comparison's plain demo). Guidance: SiT and DDPM sample
with the demo evaluation's guidance (scale 2.0 on all channels; a guided evaluation runs the network on
the conditional and the null row together and counts as one NFE, as experiments/fast_sampling does);
MeanFlow's guidance is trained in (omega 1.0, kappa 0.5: an effective scale omega / (1 - kappa) = 2.0)
and its sampler applies none. SiT's Euler with `steps` grid points makes steps - 1 evaluations, Heun
2 (steps - 1); DDPM's ancestral sampler and DDIM respaced to k steps make k (k >= 2: a respaced diffusion
needs two steps), DPM-Solver++(2M) with k steps makes k.

Writes OUT/results.json (after every row: a rerun continues), OUT/table.md and OUT/quality_vs_nfe.png.
The median training step time of each run comes from its metrics.jsonl (batch / img_per_s over the
100-step log intervals after the first, which holds the compilation).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

RUNS = {  # name: the `dit-jax train` arguments besides --workdir
    "meanflow": ["--config", "configs/meanflow.py:demo"],
    # SiT's own evaluation (Heun, 100 steps: 198 NFE a sample) was the costliest part of the run on the
    # shared 2-core machine: off, as this script scores the checkpoints itself.
    "sit": ["--config.objective=sit", "--config.evals.digits.kind="],
    "ddpm": ["--config.evals.digits.kind="],   # off too, for time: the demo's DDPM scores are in docs/demo.md
}
KEEP = ["--config.keep_checkpoints=10"]   # the demo saves every 500 steps and keeps 3: keep them all
STEPS = (2000, 4000)
GRID = {  # objective: {sampler: steps}; NFE 1, 2, 4 each
    "meanflow": {"meanflow": (1, 2, 4)},
    "sit": {"euler": (2, 3, 5), "heun": (2, 3)},
    # A respaced diffusion needs 2 steps at least (ancestral DDPM and DDIM): DPM-Solver++(2M) gives DDPM's 1 NFE.
    "ddpm": {"ddpm": (2, 4), "ddim": (2, 4), "dpm++2m": (1, 2, 4)},
}
BATCH = 32   # configs/demo.py


def nfe(objective: str, sampler: str, steps: int) -> int:
    if objective == "sit":
        return (steps - 1) * (1 if sampler == "euler" else 2)
    return steps


def finished(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "goodput.json")) and os.path.isdir(
        os.path.join(workdir, "checkpoints", str(STEPS[-1])))


def train(name: str, workdir: str) -> None:
    cmd = [sys.executable, "-m", "dit_jax.cli", "train", "--workdir", workdir, *RUNS[name], *KEEP]
    print(f"training {name}: {' '.join(cmd[2:])} (log: {workdir}.log)", flush=True)
    os.makedirs(os.path.dirname(workdir) or ".", exist_ok=True)
    with open(workdir + ".log", "a") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)


def score(workdir: str, step: int, sampler: str, steps: int) -> dict:
    """The demo's digits evaluation of `workdir`'s EMA weights at `step` with `sampler` at `steps`."""
    import ml_collections
    from dit_jax.run import make_run
    from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler, objective_kind
    from dit_jax.train.checkpoint import load_run
    from dit_jax.train.evaluators import Evaluator, evaluate
    params, stored, got = load_run(workdir, step)
    config = ml_collections.ConfigDict(stored)
    run = make_run(config)
    objective = objective_kind(run.objective)
    section = ml_collections.ConfigDict(config.evals.digits.to_dict())
    section.update(kind="digits", sampler=sampler, steps=str(steps))   # also where the run had its own off
    settings = SamplerSettings.from_config(section, config.transport if objective == "sit" else None)
    problems = settings.problems(run.objective)
    if problems:
        raise ValueError(f"{sampler}:{steps}: {'; '.join(problems)}")
    t0 = time.perf_counter()
    s = evaluate(run, Evaluator("digits", section, build_sampler(run, settings)), params)
    return dict(objective=objective, step=got, sampler=sampler, steps=steps, nfe=nfe(objective, sampler, steps),
                settings=settings.describe(), class_accuracy=s["eval/digits/class_accuracy"],
                frechet_distance=s["eval/digits/frechet_distance"], num_samples=int(s["eval/digits/num_samples"]),
                seconds=time.perf_counter() - t0, load_average=os.getloadavg()[0],
                measured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def run_facts(workdir: str) -> dict:
    """Median ms per training step, the goodput ledger's training seconds, and the run's own evaluations."""
    rates, own = [], {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for r in map(json.loads, f):
            if "img_per_s" in r and r["step"] > 100:
                rates.append(r["img_per_s"])
            if "eval/digits/class_accuracy" in r:
                own[r["step"]] = (r["eval/digits/class_accuracy"], r["eval/digits/frechet_distance"])
    final_path = os.path.join(workdir, "demo_scores.json")
    if os.path.isfile(final_path):
        with open(final_path) as f:
            final = json.load(f)
        own[STEPS[-1]] = (final["eval/digits/class_accuracy"], final["eval/digits/frechet_distance"])
    facts = dict(ms_per_step=1000 * BATCH / statistics.median(rates) if rates else float("nan"), own_evaluation={str(k): v for k, v in own.items()})
    path = os.path.join(workdir, "goodput.json")
    if os.path.isfile(path):
        with open(path) as f:
            facts["seconds"] = json.load(f)["summary"]["seconds"]
    return facts


def own_sampler(workdir: str) -> tuple[str, int] | tuple[None, None]:
    """(description, NFE) of the run's own evaluation (its config's evals.digits; None if it had none)."""
    import ml_collections
    from dit_jax.train.checkpoint import load_run
    _, stored, _ = load_run(workdir, STEPS[-1])
    e = ml_collections.ConfigDict(stored).evals.digits
    if not e.kind:
        return None, None
    objective = stored["objective"]
    sampler = e.sampler or {"ddpm": "ddpm", "sit": "heun", "meanflow": "meanflow"}[objective]
    return f"{sampler}, {e.steps} steps (the run's own evaluation)", nfe(objective, sampler, int(e.steps))


def table(results: dict) -> str:
    rows = results["rows"]
    order = [(o, s, k) for o, g in GRID.items() for s, ks in g.items() for k in ks]
    out = [f"| objective | sampler | NFE | step {STEPS[0]:,}: class accuracy / Frechet distance | step {STEPS[1]:,} |",
           "|---|---|---|---|---|"]

    def cell(o, s, k, step):
        r = [r for r in rows if (r["objective"], r["sampler"], r["steps"], r["step"]) == (o, s, k, step)]
        return f"{r[0]['class_accuracy']:.3f} / {r[0]['frechet_distance']:.2f}" if r else "not run"
    for o, s, k in order:
        if any(r["objective"] == o for r in rows):
            out.append(f"| {o} | {s} | {nfe(o, s, k)} | {cell(o, s, k, STEPS[0])} | {cell(o, s, k, STEPS[1])} |")
    for name, info in results["runs"].items():
        own = info["facts"]["own_evaluation"]
        if not info["own_sampler"]:
            continue
        cells = [f"{own[str(st)][0]:.3f} / {own[str(st)][1]:.2f}" if str(st) in own else "-" for st in STEPS]
        out.append(f"| {name} | {info['own_sampler']} | {info['own_nfe']} | {cells[0]} | {cells[1]} |")
    out += ["", "| run | command | ms per training step (median) | training s | grids and evaluations s |", "|---|---|---|---|---|"]
    for name, info in results["runs"].items():
        sec = info["facts"].get("seconds", {})
        out.append(f"| {name} | `{info['command']}` | {info['facts']['ms_per_step']:.1f} | "
                   f"{sec.get('train', float('nan')):.0f} | {sec.get('evaluation', float('nan')):.0f} |")
    return "\n".join(out) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (the axis formatters below)
    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    lines = {}
    for r in results["rows"]:
        lines.setdefault((r["objective"], r["sampler"], r["step"]), []).append(r)
    colours = {}
    for (o, s, step), rs in sorted(lines.items()):
        rs.sort(key=lambda r: r["nfe"])
        colour = colours.setdefault((o, s), f"C{len(colours)}")
        style = dict(color=colour, marker="o", linestyle="-" if step == STEPS[-1] else ":",
                     alpha=1.0 if step == STEPS[-1] else 0.5, label=f"{o}: {s}, step {step:,}")
        ax_fd.plot([r["nfe"] for r in rs], [r["frechet_distance"] for r in rs], **style)
        ax_acc.plot([r["nfe"] for r in rs], [r["class_accuracy"] for r in rs], **style)
    for ax, what in ((ax_fd, "Frechet distance (lower is better)"), (ax_acc, "class accuracy")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4], ["1", "2", "4"])
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    ax_fd.set_yscale("log")
    ax_fd.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_fd.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax_acc.legend(fontsize=7)
    fig.suptitle("digits demo, 500 EMA samples: solid step 4,000, dotted step 2,000")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    global STEPS
    from dit_jax import platforms
    platforms.choose()  # CPU alone where there is no accelerator (no libtpu probing)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/demos/mf", help="the runs' directories: WORKDIR/NAME")
    p.add_argument("--out", default="experiments/meanflow_digits")
    p.add_argument("--run", action="append", default=[], help="NAME=DIR: run NAME trained elsewhere")
    p.add_argument("--only", default=",".join(RUNS), help="comma-separated runs to train and score")
    p.add_argument("--train", action="store_true", help="train the runs that are not finished")
    p.add_argument("--steps", default=",".join(map(str, STEPS)), help="the two training steps to score")
    args = p.parse_args(argv)
    STEPS = tuple(int(s) for s in args.steps.split(","))
    dirs = {name: os.path.join(args.workdir, name) for name in RUNS}
    dirs.update(dict(item.split("=", 1) for item in args.run))
    names = [n for n in args.only.split(",") if n]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {"runs": {}, "rows": []}
    for name in names:
        wd = dirs[name]
        if not finished(wd):
            if not args.train:
                print(f"{name}: no finished run at {wd} (--train trains it); skipped", flush=True)
                continue
            train(name, wd)
        sampler, own_nfe = own_sampler(wd)
        results["runs"][name] = dict(
            workdir=wd, command=" ".join(["dit-jax train", *RUNS[name], "--workdir", wd, *KEEP]),
            facts=run_facts(wd), own_sampler=sampler, own_nfe=own_nfe)
        for step in STEPS:
            for sampler, ks in GRID[name].items():
                for k in ks:
                    if any((r["objective"], r["sampler"], r["steps"], r["step"]) == (name, sampler, k, step)
                           for r in results["rows"]):
                        continue
                    row = score(wd, step, sampler, k)
                    results["rows"].append(row)
                    print(f"{name} step {step} {sampler}:{k} NFE {row['nfe']}: class accuracy "
                          f"{row['class_accuracy']:.3f}, Frechet distance {row['frechet_distance']:.2f} "
                          f"({row['seconds']:.0f} s)", flush=True)
                    with open(path, "w") as f:
                        json.dump(results, f, indent=1)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table(results))
    plot(results, os.path.join(args.out, "quality_vs_nfe.png"))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
