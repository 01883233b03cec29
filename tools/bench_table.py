#!/usr/bin/env python
"""Markdown of `dit-jax benchmark` reports, and the running summary of tools/device_benchmark.sh.

    python tools/bench_table.py REPORT.json [...]           # one table of the reports' rows
    python tools/bench_table.py init --out DIR --env ENV.json --title TEXT
    python tools/bench_table.py record --out DIR --group NAME --status ok|timeout|failed|skipped ...

`init` and `record` keep DIR/bench.json (the environment, then every group: its status, seconds,
budget, command, its report and its output's last lines) and rewrite DIR/bench.md from it after each
group: one table of every group's rows, with MFU and the ratio to the best PyTorch row of the same kind
and batch computed over all groups (`dit_jax.benchmark.ratios.add_ratios`), and each group's own table.
Both files are replaced whole (written beside, then renamed), so whatever stops the run leaves the
last complete summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLUMNS = ("kind", "impl", "setting", "input", "img/s", "ms/step", "MFU", "peak GiB", "compile s", "vs torch")
STATUS_WORDS = dict(ok="ok", timeout="timed out", failed="failed", skipped="skipped")


def _num(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def markdown_table(rows: list[dict], group: bool = False) -> str:
    """One markdown table; a row that failed (out of memory, unavailable) shows its error instead of numbers."""
    head = (("group",) if group else ()) + COLUMNS
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r.get("group", "")] if group else []
        cells += [r["kind"], r["impl"], r["setting"], r.get("input", "")]
        if r.get("error"):
            cells += [f"**{r['error']}**"] + [""] * (len(COLUMNS) - 5)
        else:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            ratio = f"{r['vs_torch']:.2f}x" if r.get("vs_torch") is not None else "-"
            cells += [_num(r.get("img_s"), ".2f"), _num(r.get("step_ms"), ".2f"), mfu, _num(r.get("peak_gib"), ".1f"),
                      _num(r.get("compile_s"), ".1f"), ratio]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_state(out: str) -> dict:
    path = os.path.join(out, "bench.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return dict(title="", environment={}, groups=[])


def _ratios():
    """dit_jax/benchmark/ratios.py, loaded by its path: importing it as dit_jax.benchmark.ratios would run
    dit_jax/__init__.py, which imports jax and flax (about a CPU second in each of the run's records)."""
    import importlib.util
    name = "dit_jax_benchmark_ratios"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dit_jax", "benchmark",
                            "ratios.py")
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def combined_rows(state: dict) -> list[dict]:
    """Every group's kept rows, tagged with the group, with MFU and vs torch computed across groups."""
    add_ratios = _ratios().add_ratios
    rows, peak, devices = [], 0.0, 1
    for g in state["groups"]:
        report = g.get("report") or {}
        if report.get("peak_tflops_per_device"):
            peak = report["peak_tflops_per_device"] * 1e12
            devices = max(devices, (report.get("environment") or {}).get("device_count", 1))
        for r in report.get("rows", []):
            if not g.get("keep") or r["kind"] in g["keep"]:
                rows.append(dict(copy.deepcopy(r), group=g["name"]))
    add_ratios(rows, peak, devices)
    return rows


def render(state: dict) -> str:
    env = state.get("environment") or {}
    v = env.get("versions") or {}
    device = env.get("gpu") or env.get("device_kind") or "?"
    lines = [f"# {state.get('title') or 'dit-jax benchmark'}", ""]
    lines.append(f"{device}" + (f" (driver {env['driver']}, {env['gpu_memory']})" if env.get("driver") else "")
                 + f", {env.get('date', '?')}. jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, CUDA plugin "
                 f"{v.get('jax-cuda13-plugin') or v.get('jax-cuda12-plugin')}, flax {v.get('flax')}, "
                 f"torch {v.get('torch')}, Python {env.get('python')}.")
    for key, word in (("problems", "missing"), ("warnings", "warning")):
        for line in env.get(key) or []:
            lines.append(f"- {word}: {line}")
    lines += ["", "| group | status | seconds | budget s | command |", "|---|---|---|---|---|"]
    for g in state["groups"]:
        status = STATUS_WORDS.get(g["status"], g["status"]) + (f": {g['reason']}" if g.get("reason") else "")
        lines.append(f"| {g['name']} | {status} | {_num(g.get('seconds'), '.0f')} | {_num(g.get('budget_s'), 'd')} | "
                     f"`{g.get('command', '')}` |")
    rows = combined_rows(state)
    lines += ["", "All groups (batch per device; vs torch: JAX img/s per device over the best PyTorch row of the "
              "same kind and batch in this run; MFU against the nominal bf16 peak):", "",
              markdown_table(rows, group=True)]
    for g in state["groups"]:
        lines += ["", f"## {g['name']}: {STATUS_WORDS.get(g['status'], g['status'])}"
                  + (f" after {g['seconds']:.0f} s of {g['budget_s']} s" if g.get("seconds") is not None else ""), ""]
        mine = [r for r in rows if r["group"] == g["name"]]
        if mine:
            lines.append(markdown_table(mine))
        if g["status"] != "ok" and g.get("log_tail"):
            lines += ["", "```", g["log_tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def save(state: dict, out: str) -> None:
    _write(os.path.join(out, "bench.json"), json.dumps(state, indent=2))
    _write(os.path.join(out, "bench.md"), render(state))


def tail(path: str, lines: int = 15) -> str:
    if not path or not os.path.isfile(path):
        return ""
    with open(path, errors="replace", newline="") as f:  # newline="": keep the carriage returns
        # progress bars redraw with carriage returns: keep what each line ended as
        text = [line.rsplit("\r", 1)[-1] for line in f.read().split("\n")]
    return "\n".join([line for line in text if line.strip()][-lines:])


def cmd_init(args) -> int:
    state = dict(title=args.title, environment={}, groups=[])
    if args.env and os.path.isfile(args.env):
        with open(args.env) as f:
            state["environment"] = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    save(state, args.out)
    return 0


def cmd_record(args) -> int:
    state = load_state(args.out)
    report = None
    if args.report and os.path.isfile(args.report):
        with open(args.report) as f:
            report = json.load(f)
    status = args.status
    if status == "ok" and report is None:
        status, args.reason = "failed", (args.reason or "exited 0 but wrote no report")
    state["groups"] = [g for g in state["groups"] if g["name"] != args.group] + [dict(
        name=args.group, status=status, reason=args.reason or "", seconds=args.seconds, budget_s=args.budget,
        rc=args.rc, command=args.command, keep=[k for k in args.keep.split(",") if k],
        log_tail=tail(args.log) if status != "ok" else "", report=report)]
    save(state, args.out)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] not in (["init"], ["record"]):  # plain reports -> one table on stdout
        rows = []
        for path in argv:
            with open(path) as f:
                rows += json.load(f)["rows"]
        print(markdown_table(rows))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init")
    i.add_argument("--out", required=True)
    i.add_argument("--env", default="")
    i.add_argument("--title", default="")
    r = sub.add_parser("record")
    r.add_argument("--out", required=True)
    r.add_argument("--group", required=True)
    r.add_argument("--status", required=True, choices=sorted(STATUS_WORDS))
    r.add_argument("--reason", default="")
    r.add_argument("--seconds", type=float, default=None)
    r.add_argument("--budget", type=int, default=None)
    r.add_argument("--rc", type=int, default=None)
    r.add_argument("--command", default="")
    r.add_argument("--keep", default="", help="comma-separated row kinds to show (default: all)")
    r.add_argument("--report", default="")
    r.add_argument("--log", default="")
    args = p.parse_args(argv)
    return cmd_init(args) if args.cmd == "init" else cmd_record(args)


if __name__ == "__main__":
    sys.exit(main())
