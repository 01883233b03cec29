"""REPA against the plain digits demo at the same steps: class accuracy and Frechet distance (the demo's
digit classifier, which is also REPA's frozen encoder here) at 500, 1,000, 2,000 and 4,000 steps.

    nice -n 10 python experiments/repa_digits/compare.py --out experiments/repa_digits

Trains configs/demo.py and configs/repa.py:digits one after the other (about 12 minutes each on 2 idle CPU
cores, more with evaluations every 500 steps), then writes table.md and curves.png in --out.
"""

import argparse
import json
import os

from dit_jax.configs.files import load_config
from dit_jax.train.loop import train_and_evaluate

STEPS = (500, 1000, 2000, 4000)
RUNS = {"plain demo": "configs/demo.py", "REPA (digits-mlp encoder)": "configs/repa.py:digits"}


def scores(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for row in map(json.loads, f):
            if "eval/digits/class_accuracy" in row:
                out[row["step"]] = (row["eval/digits/class_accuracy"], row["eval/digits/frechet_distance"])
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="experiments/repa_digits")
    parser.add_argument("--workdir", default="/tmp/repa_digits")
    args = parser.parse_args()
    results = {}
    for name, config in RUNS.items():
        c = load_config(config)
        c.total_steps = STEPS[-1]
        c.evals.digits.update(every=STEPS[0])
        wd = os.path.join(args.workdir, name.split()[0].lower())
        if not os.path.isdir(os.path.join(wd, "checkpoints")) or str(STEPS[-1]) not in os.listdir(os.path.join(wd, "checkpoints")):
            train_and_evaluate(c, wd)
        results[name] = scores(wd)
    lines = ["| run | " + " | ".join(f"step {s:,}" for s in STEPS) + " |", "|---" * (len(STEPS) + 1) + "|"]
    for name, by_step in results.items():
        cells = [f"{by_step[s][0]:.3f} / {by_step[s][1]:.2f}" if s in by_step else "-" for s in STEPS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "class accuracy / Frechet distance (500 guided EMA samples)\n\n" + "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
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
