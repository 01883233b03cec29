"""tools/device_benchmark.sh: the accelerator run's script path, dry-run on CPU so that it cannot rot,
and its helpers (the wheel closure, the markdown summary)."""

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "device_benchmark.sh")
sys.path.insert(0, os.path.join(REPO, "tools"))

import bench_table  # noqa: E402
import device_env  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run; torch-sample gets a 1-second budget so that it times out between groups that run."""
    out = tmp_path_factory.mktemp("devbench")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, JAX_PLATFORMS="cpu", BENCH_BUDGET_torch_sample="1")
    env.pop("BENCH_GROUPS", None)
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], env=env, capture_output=True, text=True, timeout=1200)
    assert (out / "bench.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    state = json.loads((out / "bench.json").read_text())
    return proc, out, state, {g["name"]: g for g in state["groups"]}


def _rows(group):
    return [r for r in (group["report"] or {}).get("rows", []) if not group["keep"] or r["kind"] in group["keep"]]


@pytest.mark.slow
def test_dry_run_writes_every_group_and_marks_the_one_over_budget(dry_run):
    proc, out, state, groups = dry_run
    assert proc.returncode == 3, proc.stderr[-3000:]  # 3: a group did not finish, the others did
    assert list(groups) == ["train-b32", "torch-train", "sample-ddpm", "torch-sample", "meanflow-b32",
                            "train-b256-remat", "torch-compile", "sample-fast", "train-repa-b32"]
    status = {name: g["status"] for name, g in groups.items()}
    fast = device_env.fast_solver()
    assert status == {"train-b32": "ok", "torch-train": "ok", "sample-ddpm": "ok", "torch-sample": "timeout",
                      "meanflow-b32": "ok",
                      "train-b256-remat": "ok", "torch-compile": "skipped",
                      "sample-fast": "ok" if fast else "skipped", "train-repa-b32": "skipped"}
    # The timed-out group: marked, with its budget, no rows; a group after it still ran.
    timed_out = groups["torch-sample"]
    assert timed_out["budget_s"] == 1 and timed_out["rc"] in (124, 137) and timed_out["report"] is None
    assert "over its 1 s budget" in timed_out["reason"]
    assert groups["train-b256-remat"]["seconds"] > 1

    train = {r["input"]: r for r in _rows(groups["train-b32"]) if r["kind"] == "train"}
    assert set(train) == {"synthetic dataset, on device", "latent dataset (Grain)"}
    assert all(r["img_s"] > 0 and r["setting"] == "b2 float32 xla remat=none" for r in train.values())
    assert {r["kind"] for r in _rows(groups["train-b32"])} == {"train", "save", "input"}
    big = [r for r in _rows(groups["train-b256-remat"]) if r["kind"] == "train"]
    assert [r["setting"] for r in big] == ["b4 float32 xla remat=full"] and big[0]["img_s"] > 0
    # A sampler group shows only its sampler row (its one-step train row stays in the report).
    sample = _rows(groups["sample-ddpm"])
    assert [(r["kind"], r["input"]) for r in sample] == [("sample", "3 ddpm steps, cfg 1.5")] and sample[0]["img_s"] > 0
    assert {r["kind"] for r in groups["sample-ddpm"]["report"]["rows"]} == {"train", "save", "sample"}
    # MeanFlow's group: its step (a MeanFlow model: the h embedder's parameters counted) and its 1-NFE sampler.
    mf = {r["kind"]: r for r in _rows(groups["meanflow-b32"])}
    assert set(mf) == {"train", "sample"} and mf["train"]["img_s"] > 0 and mf["sample"]["img_s"] > 0
    assert mf["sample"]["input"] == "1 meanflow steps, cfg 1.0"
    assert groups["meanflow-b32"]["report"]["model_config"]["second_time_input"] is True
    # The reference: float32 eager on CPU, bf16 unavailable, no compile row; the same model as the JAX rows.
    torch_rows = _rows(groups["torch-train"])
    assert [(r["setting"], r.get("error")) for r in torch_rows] == [("b2 float32 (CPU)", None),
                                                                    ("b2 bf16", "unavailable: needs CUDA")]
    assert torch_rows[0]["img_s"] > 0 and torch_rows[0]["flops_per_image"] == train[
        "synthetic dataset, on device"]["flops_per_image"]
    assert groups["torch-train"]["report"]["model_config"] == groups["train-b32"]["report"]["model_config"]

    # The summary: ratios across groups (a JAX train row over the torch group's row of its batch); none for a
    # JAX row with no PyTorch row of its kind and batch (the timed-out torch-sample left the sampler none).
    md = (out / "bench.md").read_text()
    combined = {(r["group"], r["kind"], r.get("input", "")): r for r in bench_table.combined_rows(state)}
    step = combined["train-b32", "train", "synthetic dataset, on device"]
    assert step["vs_torch"] == pytest.approx(step["img_s"] / torch_rows[0]["img_s"])
    assert "vs_torch" not in combined["sample-ddpm", "sample", "3 ddpm steps, cfg 1.5"]
    assert "vs_torch" not in combined["train-b256-remat", "train", "synthetic dataset, on device"]
    assert f"{step['vs_torch']:.2f}x" in md
    for text in ("| torch-sample | timed out: over its 1 s budget | 1 | 1 |", "b4 float32 xla remat=full",
                 "skipped: dry run: no compile rows", "unavailable: needs CUDA", state["environment"]["date"],
                 f"jax {state['environment']['versions']['jax']}"):
        assert text in md
    assert state["environment"]["platform"] == "cpu" and not state["environment"]["problems"]
    # What the device tool returns: at most 8 files, named in letters, digits, '.', '_' and '-'.
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.json", "bench.md", "log.txt"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    assert "=== torch-sample: timeout" in (out / "log.txt").read_text()
    assert proc.stdout.rstrip().endswith(md.rstrip().splitlines()[-1])  # the summary is printed last


def test_missing_closure_takes_only_what_the_machine_lacks():
    from packaging.requirements import Requirement
    present = device_env.device_packages()
    need = device_env.missing_closure([Requirement("tensorflow-datasets")], present)
    # promise and tensorflow-metadata come only through tensorflow-datasets; numpy and protobuf are there.
    assert {"tensorflow-datasets", "promise", "tensorflow-metadata", "array-record", "dm-tree"} <= set(need)
    assert not {"numpy", "protobuf", "etils", "absl-py"} & set(need)
    from importlib.metadata import version
    assert need["tensorflow-datasets"] == version("tensorflow-datasets")  # pinned to this environment
    # Negative control: on a bare machine the same walk takes numpy and protobuf too.
    bare = device_env.missing_closure([Requirement("tensorflow-datasets")], set())
    assert {"numpy", "protobuf", "etils"} <= set(bare)


def test_missing_closure_follows_extras_through_what_the_machine_has():
    from packaging.requirements import Requirement
    # etils is on the machine; etils[epath] adds fsspec, zipp, typing_extensions: the machine lacking only
    # zipp must get zipp, and nothing when it lacks nothing.
    need = device_env.missing_closure([Requirement("etils[epath]")], {"etils", "fsspec", "typing-extensions"})
    assert set(need) == {"zipp"}
    assert device_env.missing_closure([Requirement("etils")], {"etils"}) == {}


def test_summary_marks_failed_and_timed_out_groups(tmp_path):
    report = dict(peak_tflops_per_device=100.0, environment=dict(device_count=1), rows=[
        dict(kind="train", impl="jax", batch=4, setting="b4", input="x", img_s=10.0, step_ms=400.0,
             flops_per_image=1e12, compile_s=3.0, peak_gib=None),
        dict(kind="train", impl="jax", batch=8, setting="b8", error="out of memory")])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    log = tmp_path / "g.log"
    log.write_text("start\nstep 1\rstep 2\rstep 3\nKilled by budget\n")
    assert bench_table.main(["init", "--out", str(tmp_path), "--title", "T"]) == 0
    assert bench_table.main(["record", "--out", str(tmp_path), "--group", "a", "--status", "ok", "--seconds", "5",
                             "--budget", "9", "--report", str(path)]) == 0
    assert bench_table.main(["record", "--out", str(tmp_path), "--group", "b", "--status", "timeout", "--seconds", "9",
                             "--budget", "9", "--reason", "over its 9 s budget", "--log", str(log)]) == 0
    # exit 0 with no report is not a result
    assert bench_table.main(["record", "--out", str(tmp_path), "--group", "c", "--status", "ok",
                             "--report", str(tmp_path / "none.json")]) == 0
    state = json.loads((tmp_path / "bench.json").read_text())
    assert [(g["name"], g["status"]) for g in state["groups"]] == [("a", "ok"), ("b", "timeout"), ("c", "failed")]
    md = (tmp_path / "bench.md").read_text()
    assert "| a | train | jax | b4 | x | 10.00 | 400.00 | 10.0% | - | 3.0 | - |" in md  # MFU 10 img/s * 1 TF / 100 TF
    assert "**out of memory**" in md and "| b | timed out: over its 9 s budget | 9 | 9 |" in md
    assert "step 3\nKilled by budget" in md and "step 2" not in md  # the log's last lines, progress redraws dropped
    assert "exited 0 but wrote no report" in md


def test_bad_arguments_are_one_line(tmp_path):
    proc = subprocess.run(["bash", SCRIPT, "--fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown argument '--fast'")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: OUT is not set")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_device_mode_without_a_gpu_stops_at_the_check_and_says_why(tmp_path):
    """The device path on this CPU machine: the wheels install (if prepared), the check finds no GPU for
    jax, names it in one line, and no group starts."""
    out, site = tmp_path / "out", tmp_path / "site"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, BENCH_SITE=str(site), JAX_PLATFORMS="cpu")
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error: the environment cannot run the benchmark" in proc.stderr
    md = (out / "bench.md").read_text()
    assert "- missing: jax " in md and "sees cpu devices, not gpu" in md
    assert json.loads((out / "bench.json").read_text())["groups"] == []
    if os.path.isdir(os.path.join(REPO, ".whl")):  # prepared here: the same install the machine does
        assert (site / "tensorflow_datasets").is_dir()
