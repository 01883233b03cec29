"""The 2025 evaluation protocol on the digits demo: balanced vs random labels, autoguidance vs CFG,
and quality against the post-hoc EMA length, from ONE demo training run with post-hoc EMA on.

    # 1. the demo run (2 CPU cores: 11 min alone, 25 min on a shared machine), keeping every checkpoint:
    dit-jax train --config configs/demo.py --workdir runs/demo_phema \
        --config.phema.stds='(0.05,0.1)' --config.phema.snapshot_every=100 --config.keep_checkpoints=10
    # 2. the tables (writes experiments/evaluation_2025_digits/results.json, results.md, ema_length.png):
    python experiments/evaluation_2025_digits/run.py --workdir runs/demo_phema [--parts labels,autoguidance,phema]

Scores: the demo's digit classifier (class accuracy, Frechet distance of its features against all
1,797 real digits; lower is better, ~0.4 for 1,000 real digits), on N samples of 20 DPM-Solver++
steps (2M), guidance on every channel.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# DPM-Solver++ in 20 steps, not the demo's 100 DDPM steps: five times cheaper on a shared CPU.
SAMPLER, STEPS = "dpm++2m", "20"


def score(npz: str) -> dict:
    from dit_jax.metrics.digits_classifier import score_samples
    with np.load(npz) as z:
        images, labels = z["arr_0"], z["arr_1"]
    out = score_samples(images.astype(np.float32) / 127.5 - 1.0, labels)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def sample(tmp: str, name: str, n: int, *, workdir=None, weights=None, labels="balanced", seed=0, cfg=1.0,
           cfg_mode="all", guide=None) -> dict:
    from dit_jax.jobs.sample import sample as run_sample
    from dit_jax.sampling.run_sampler import SamplerSettings
    out = os.path.join(tmp, name + ".npz")
    with contextlib.redirect_stdout(io.StringIO()):
        run_sample(out, workdir=workdir, weights=weights, num_samples=n, labels=labels, seed=seed, guide=guide,
                   settings=SamplerSettings(sampler=SAMPLER, steps=STEPS, cfg_scale=cfg, cfg_mode=cfg_mode),
                   batch_per_device=250)
    result = score(out)
    print(name, result, flush=True)
    return result


def labels_part(workdir, tmp, n, seeds):
    rows = {}
    for mode in ("random", "balanced"):
        rows[mode] = [sample(tmp, f"{mode}_{s}", n, workdir=workdir, labels=mode, seed=s, cfg=2.0) for s in seeds]
    summary = {m: {k: [float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))]
                   for k in ("frechet_distance", "class_accuracy")} for m, rs in rows.items()}
    return {"runs": rows, "mean_std": summary}


def autoguidance_part(workdir, guide_step, tmp, n, scales, cfg_too=True):
    rows = [dict(method="none", scale=1.0, **sample(tmp, "plain", n, workdir=workdir))] if cfg_too else []
    for w in scales:
        if cfg_too:
            rows.append(dict(method="cfg", scale=w, **sample(tmp, f"cfg_{w}", n, workdir=workdir, cfg=w)))
        rows.append(dict(method=f"autoguidance (step {guide_step})", scale=w,
                         **sample(tmp, f"auto_{w}", n, workdir=workdir, cfg=w, guide=f"{workdir}:{guide_step}")))
    return rows


def phema_part(workdir, tmp, n, stds):
    from dit_jax.exit_codes import BadInput
    from dit_jax.jobs.phema import reconstruct
    rows = []
    for std in stds:
        out = os.path.join(tmp, f"phema_{std}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                reconstruct(workdir, std, out)
        except BadInput as e:
            print(f"std {std}: {e}")
            continue
        rows.append(dict(std=std, cfg=2.0, **sample(tmp, f"phema_{std}", n, weights=out, cfg=2.0)))
    return rows


def plot(rows, path):
    """Frechet distance against the EMA std (PIL: no plotting package needed)."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (640, 400), "white")
    d = ImageDraw.Draw(img)
    stds = sorted({r["std"] for r in rows})
    fds = [r["frechet_distance"] for r in rows]
    lo, hi = min(fds), max(fds)
    x = lambda s: 60 + (s - stds[0]) / max(stds[-1] - stds[0], 1e-9) * 540  # noqa: E731
    y = lambda f: 360 - (f - lo) / max(hi - lo, 1e-9) * 320  # noqa: E731
    d.line([(60, 360), (600, 360)], fill="black"), d.line([(60, 40), (60, 360)], fill="black")
    pts = [(x(r["std"]), y(r["frechet_distance"])) for r in rows]
    if len(pts) > 1:
        d.line(pts, fill="red", width=2)
    for px, py in pts:
        d.ellipse([px - 3, py - 3, px + 3, py + 3], fill="red")
    d.text((430, 50), "cfg 2.0, 1,000 samples", fill="red")
    for s in stds:
        d.text((x(s) - 10, 365), f"{s:g}", fill="black")
    d.text((5, 30), f"FD {hi:.2f}", fill="black"), d.text((5, 352), f"{lo:.2f}", fill="black")
    d.text((250, 383), "post-hoc EMA std", fill="black")
    img.save(path)


def tables(results: dict) -> str:
    """The markdown tables of results.json (what the README and docs/evaluation_2025.md show)."""
    out = []
    if "labels" in results:
        out += ["| labels | Frechet distance (mean +- std, 5 seeds) | class accuracy |", "|---|---|---|"]
        for mode, v in results["labels"]["mean_std"].items():
            (fd, fds), (acc, accs) = v["frechet_distance"], v["class_accuracy"]
            per_seed = ", ".join(f"{r['frechet_distance']:.2f}" for r in results["labels"]["runs"][mode])
            out.append(f"| {mode} | {fd:.2f} +- {fds:.2f} ({per_seed}) | {acc:.3f} +- {accs:.3f} |")
        out.append("")
    if "autoguidance" in results:
        out += ["| guidance | scale | Frechet distance | class accuracy |", "|---|---|---|---|"]
        out += [f"| {r['method']} | {r['scale']} | {r['frechet_distance']:.2f} | {r['class_accuracy']:.3f} |"
                for r in sorted(results["autoguidance"] + results.get("autoguidance_more", []) + results.get(
                    "cfg_more", []), key=lambda r: (r["method"] != "none", r["method"], r["scale"]))]
        out.append("")
    if "phema" in results:
        out += ["| post-hoc EMA std | Frechet distance (cfg 2.0) | class accuracy |", "|---|---|---|"]
        out += [f"| {r['std']} | {r['frechet_distance']:.2f} | {r['class_accuracy']:.3f} |" for r in results["phema"]]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir")
    p.add_argument("--parts", default="labels,autoguidance,phema")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--guide-step", type=int, default=1000)
    p.add_argument("--out", default=HERE)
    p.add_argument("--tables", action="store_true", help="print the tables of OUT/results.json and stop")
    args = p.parse_args()
    if args.tables:
        print(tables(json.load(open(os.path.join(args.out, "results.json")))))
        return
    parts = args.parts.split(",")
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    def save():  # after each part: a long run that is stopped keeps what it measured
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            if part == "labels":
                results["labels"] = labels_part(args.workdir, tmp, args.num_samples, range(5))
            elif part == "autoguidance":
                results["autoguidance"] = autoguidance_part(args.workdir, args.guide_step, tmp, args.num_samples,
                                                            (2.0, 3.0))
            elif part == "autoguidance_more":  # smaller scales, and a later (stronger) guide
                results["autoguidance_more"] = [
                    *autoguidance_part(args.workdir, args.guide_step, tmp, args.num_samples, (1.2, 1.5), False),
                    *autoguidance_part(args.workdir, 2500, tmp, args.num_samples, (1.5, 2.0), False)]
            elif part == "cfg_more":  # the scales where the later guide did best, for CFG too
                results["cfg_more"] = [
                    *[dict(method="cfg", scale=w, **sample(tmp, f"cfg_{w}", args.num_samples, workdir=args.workdir,
                                                           cfg=w)) for w in (1.25, 1.5)],
                    *autoguidance_part(args.workdir, 2500, tmp, args.num_samples, (1.25,), False)]
            elif part == "phema":
                results["phema"] = phema_part(args.workdir, tmp, args.num_samples,
                                              (0.03, 0.05, 0.1, 0.15, 0.2, 0.25))
                if results["phema"]:
                    plot(results["phema"], os.path.join(args.out, "ema_length.png"))
            save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
