"""The demo table of experiments/lightningdit_digits: class accuracy and Frechet distance of each run's
digits evaluation at 2,000 and 4,000 steps (metrics.jsonl), and its median training throughput.

    python experiments/lightningdit_digits/table.py OUT [OUT ...] [--keep TABLE] > experiments/lightningdit_digits/table.md

--keep TABLE keeps the rows of an earlier table (e.g. the committed table.md) for the runs that none of the
OUT directories holds, as they were written (their workdirs may be gone); a run measured now replaces its
old row. Rows come in run.sh's order.
"""

import json
import os
import statistics
import sys

ORDER = ("ddpm", "ddpm_qknorm", "ddpm_rmsnorm", "ddpm_swiglu", "ddpm_rope", "ddpm_wo_shift", "ddpm_all", "sit",
         "sit_lognorm", "sit_cosine", "sit_all")

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


HEADER = ("| run | step 2,000: class accuracy / Frechet distance | step 4,000 | ms per step (median) |\n"
          "|---|---|---|---|")


def kept_rows(path: str) -> dict:
    """{run: its row as written} of an earlier table."""
    rows = {}
    with open(path) as f:
        for line in f:
            cells = line.split("|")
            if len(cells) > 2 and cells[1].strip() not in ("run", "") and not cells[1].strip().startswith("---"):
                rows[cells[1].strip()] = line.rstrip("\n")
    return rows


def main(argv: list[str]) -> None:
    keep = {}
    if "--keep" in argv:
        i = argv.index("--keep")
        keep, argv = kept_rows(argv[i + 1]), argv[:i] + argv[i + 2:]
    rows = dict(keep)
    for out in argv:
        for name in sorted(os.listdir(out)):
            if os.path.isfile(os.path.join(out, name, "metrics.jsonl")):
                rows[name] = row(os.path.join(out, name))
    print(HEADER)
    for name in sorted(rows, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        print(rows[name])


if __name__ == "__main__":
    main(sys.argv[1:])
