"""The demo table of experiments/lightningdit_digits: class accuracy and Frechet distance of each run's
digits evaluation at 2,000 and 4,000 steps (metrics.jsonl), and its median training throughput.

    python experiments/lightningdit_digits/table.py OUT > experiments/lightningdit_digits/table.md
"""

import json
import os
import statistics
import sys

BATCH = 32   # configs/demo.py


def row(workdir: str) -> str:
    scores, rates = {}, []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "img_per_s" in r and r["step"] > 100:   # the first log interval holds the compilation
                rates.append(r["img_per_s"])
            for k, v in r.items():
                if k.endswith("class_accuracy") or k.endswith("frechet_distance"):
                    scores[(r["step"], k.rsplit("/", 1)[-1])] = v

    final = os.path.join(workdir, "demo_scores.json")   # the end-of-run evaluation is written here
    if os.path.isfile(final):
        with open(final) as f:
            for k, v in json.load(f).items():
                if k.endswith("class_accuracy") or k.endswith("frechet_distance"):
                    scores[(4000, k.rsplit("/", 1)[-1])] = v

    def cell(step):
        acc, fd = scores.get((step, "class_accuracy")), scores.get((step, "frechet_distance"))
        return "not reached" if acc is None else f"{acc:.3f} / {fd:.2f}"
    ms = 1000 * BATCH / statistics.median(rates) if rates else float("nan")
    return f"| {os.path.basename(workdir)} | {cell(2000)} | {cell(4000)} | {ms:.1f} |"


def main(out: str) -> None:
    print("| run | step 2,000: class accuracy / Frechet distance | step 4,000 | ms per step (median) |")
    print("|---|---|---|---|")
    for name in sorted(os.listdir(out)):
        if os.path.isfile(os.path.join(out, name, "metrics.jsonl")):
            print(row(os.path.join(out, name)))


if __name__ == "__main__":
    main(sys.argv[1])
