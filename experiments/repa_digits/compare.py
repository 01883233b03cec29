"""REPA against the plain digits demo at the same steps: class accuracy and Frechet distance (the demo's
digit classifier, which is also REPA's frozen encoder here) at 500, 1,000, 2,000 and 4,000 steps.

    nice -n 15 python experiments/repa_digits/compare.py --out experiments/repa_digits --workdir /tmp/demos/repa

Trains configs/demo.py and configs/repa.py:digits one after the other, unchanged but for the checkpoints
kept (every 500 steps, all of them), in WORKDIR/plain and WORKDIR/repa. Each run scores itself at 2,000
steps and at the end (its evaluator: `evals.digits`); the other steps are scored afterwards from their
checkpoints with the same evaluator (the same labels and noise), which costs less than evaluating every
500 steps during training. Writes results.json, table.md and curves.png in --out; the median ms per
training step comes from each run's metrics.jsonl.
"""

import argparse
import json
import os
import statistics

import ml_collections

from dit_jax.configs.files import load_config
from dit_jax.train.loop import train_and_evaluate

STEPS = (500, 1000, 2000, 4000)
BATCH = 32   # configs/demo.py
RUNS = {"plain demo": "configs/demo.py", "REPA (digits-mlp encoder)": "configs/repa.py:digits"}


def own_scores(workdir):
    """{step: (class accuracy, Frechet distance)} of the run's own evaluations (metrics.jsonl, and the
    final one in demo_scores.json), and its median ms per training step (after the first log interval,
    which holds the compilation)."""
    out, rates = {}, []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for row in map(json.loads, f):
            if "eval/digits/class_accuracy" in row:
                out[row["step"]] = (row["eval/digits/class_accuracy"], row["eval/digits/frechet_distance"])
            if "img_per_s" in row and row["step"] > 100:
                rates.append(row["img_per_s"])
    final_path = os.path.join(workdir, "demo_scores.json")   # absent when the run had its evaluation off
    if os.path.isfile(final_path):
        with open(final_path) as f:
            final = json.load(f)
        out[STEPS[-1]] = (final["eval/digits/class_accuracy"], final["eval/digits/frechet_distance"])
    return out, 1000 * BATCH / statistics.median(rates)


def score_checkpoint(workdir, step):
    """The run's own digits evaluator on the EMA weights of its checkpoint at `step`."""
    from dit_jax.run import make_run
    from dit_jax.train.checkpoint import load_run
    from dit_jax.train.evaluators import evaluate, make_evaluators
    params, stored, _ = load_run(workdir, step)
    config = ml_collections.ConfigDict(stored)
    config.evals.digits.kind = "digits"   # the demo's evaluator, also where the run had its own off
    run = make_run(config)
    s = evaluate(run, make_evaluators(run)[0], params)
    return s["eval/digits/class_accuracy"], s["eval/digits/frechet_distance"]


def main():
    from dit_jax import platforms
    platforms.choose()  # CPU alone where there is no accelerator (no libtpu probing)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/repa_digits")
    parser.add_argument("--workdir", default="/tmp/repa_digits")
    parser.add_argument("--only", default="", help="train and score only this run: plain or repa")
    parser.add_argument("--train-only", action="store_true", help="train what is missing, score nothing")
    parser.add_argument("--no-checkpoint-scores", action="store_true",
                        help="tabulate the runs' own evaluations only (2,000 and 4,000 steps)")
    parser.add_argument("--plain-workdir", default="", help="a finished plain demo run to use instead of training "
                        "one (configs/demo.py); the steps it did not score itself are scored from its checkpoints "
                        "with the demo's evaluator (those it no longer has stay unscored)")
    args = parser.parse_args()
    results, facts = {}, {}
    for name, config in RUNS.items():
        if args.only and name.split()[0].lower() != args.only:
            continue
        c = load_config(config)
        c.total_steps = STEPS[-1]
        c.keep_checkpoints = 10   # every 500 steps (the demo's checkpoint_every): all kept, to score them
        wd = os.path.join(args.workdir, name.split()[0].lower())
        if name == "plain demo" and args.plain_workdir:
            wd = args.plain_workdir
        if name == "plain demo" and args.plain_workdir:
            pass   # trained elsewhere
        elif not os.path.isfile(os.path.join(wd, "demo_scores.json")):
            train_and_evaluate(c, wd)
        if args.train_only:
            continue
        by_step, ms = own_scores(wd)
        for s in STEPS:
            if s in by_step or args.no_checkpoint_scores or not os.path.isdir(os.path.join(wd, "checkpoints", str(s))):
                continue
            by_step[s] = score_checkpoint(wd, s)
            print(f"{name} step {s} (from its checkpoint): class accuracy {by_step[s][0]:.3f}, "
                  f"Frechet distance {by_step[s][1]:.2f}", flush=True)
        results[name], facts[name] = by_step, dict(workdir=wd, config=config, ms_per_step=ms)
    if args.train_only:
        return
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({name: dict(facts[name], scores={str(s): v for s, v in sorted(results[name].items())})
                   for name in results}, f, indent=1)
    lines = ["| run | " + " | ".join(f"step {s:,}" for s in STEPS) + " |", "|---" * (len(STEPS) + 1) + "|"]
    for name, by_step in results.items():
        cells = [f"{by_step[s][0]:.3f} / {by_step[s][1]:.2f}" if s in by_step else "-" for s in STEPS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| run | ms per training step (median) |", "|---|---|"]
    lines += [f"| {name} | {facts[name]['ms_per_step']:.1f} |" for name in results]
    table = "class accuracy / Frechet distance (500 guided EMA samples)\n\n" + "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, by_step in results.items():
        steps = sorted(by_step)
        axes[0].plot(steps, [by_step[s][0] for s in steps], marker="o", label=name)
        axes[1].plot(steps, [by_step[s][1] for s in steps], marker="o", label=name)
    axes[0].set(xlabel="step", ylabel="class accuracy")
    axes[1].set(xlabel="step", ylabel="Frechet distance", yscale="log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=120)


if __name__ == "__main__":
    main()
