"""`dit-jax benchmark` on CPU for a tiny model, so that the command the GPU runs never rots."""

import json

import numpy as np
import pytest

from dit_jax.cli import main

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

TINY = ["--model", "S/2", "--input-size", "8", "--depth", "1", "--hidden-size", "32", "--num-heads", "2",
        "--num-classes", "10", "--dtype", "float32"]


def test_benchmark_times_step_pipeline_sampler_and_reference(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", *TINY, "--setting", "batch=4,attention=cudnn,dtype=bfloat16,remat=full",
                 "--steps", "2", "--warmup", "1", "--sample-steps", "2", "--sample-batch", "2", "--torch",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {(r["kind"], r["impl"], r.get("input", "")): r for r in report["rows"]}
    step = rows["train", "jax", "synthetic dataset, on device"]
    fed = rows["train", "jax", "latent dataset (Grain)"]
    sampler = rows["sample", "jax", "2 ddpm steps, cfg 1.5"]
    assert "input" in {r["kind"] for r in report["rows"]}
    checksum = rows["save", "jax", "checkpoint checksum, per save"]
    assert checksum["step_ms"] > 0 and checksum["img_s"] is None
    for r in (step, fed, sampler):
        assert r["img_s"] > 0 and r["step_ms"] > 0 and "error" not in r
    assert step["compile_s"] > 0 and step["loss"] == step["loss"]  # a real, finite loss
    assert step["setting"] == "b4 bfloat16 cudnn remat=full"  # cuDNN asked for, XLA on CPU
    # The reference: float32 eager on CPU, the GPU modes marked unavailable.
    torch_train = [r for r in report["rows"] if r["impl"] == "torch" and r["kind"] == "train"]
    assert [r.get("error") for r in torch_train] == [None, "unavailable: needs CUDA", "unavailable: needs CUDA"]
    assert step["vs_torch"] == pytest.approx(step["img_s"] / torch_train[0]["img_s"])
    assert sampler["vs_torch"] > 0
    assert report["environment"]["platform"] == "cpu" and step["peak_gib"] is None  # no memory_stats on CPU
    for text in ("img/s", "MFU", "peak GiB", "compile s", "vs torch", "b4 float32 (CPU)", "unavailable"):
        assert text in table


def test_interleaved_pairs_give_the_median_ratio_of_the_same_load(tmp_path, capsys):
    """--interleave 2: each synthetic train row and the DDPM sampler row timed as 2 pairs (ours, the
    reference's), the ratio the median of the pairs' seconds ratios, computed here from the raw pairs."""
    out = tmp_path / "bench.json"
    assert main(["benchmark", *TINY, "--setting", "batch=2", "--steps", "1", "--warmup", "1", "--no-pipeline",
                 "--sample-steps", "2", "--sample-batch", "2", "--torch", "--interleave", "2",
                 "--out", str(out)]) == 0
    table = capsys.readouterr().out
    rows = [r for r in json.loads(out.read_text())["rows"] if r["impl"] == "jax" and r["kind"] in ("train", "sample")]
    assert {r["kind"] for r in rows} == {"train", "sample"}
    for r in rows:
        jax_s, torch_s = r["paired_s"]["jax"], r["paired_s"]["torch"]
        assert len(jax_s) == len(torch_s) == 2 and min(jax_s + torch_s) > 0
        assert r["vs_torch"] == pytest.approx(np.median([t / j for j, t in zip(jax_s, torch_s)]))
        assert r["vs_torch_pairs"] == 2 and r["vs_torch_min"] <= r["vs_torch"] <= r["vs_torch_max"]
    assert "n=2" in table
    assert main(["benchmark", *TINY, "--interleave", "2"]) == 2  # pairs need the reference
    assert "add --torch" in capsys.readouterr().err


def test_bad_setting_is_one_clear_line(capsys):
    assert main(["benchmark", *TINY, "--setting", "batch=4,remat=sometimes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad --setting 'batch=4,remat=sometimes': remat must be one of")
    assert len(err.strip().splitlines()) == 1


def test_benchmark_takes_the_training_config_and_its_samplers(tmp_path):
    """--config as train: the demo with SiT's objective and ZeRO-1, its step and its sampler timed."""
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--config", "configs/demo.py", "--config.objective=sit",
                 "--config.model.depth=1", "--config.model.hidden_size=32", "--config.mesh.shard_optimizer=True",
                 "--steps", "1", "--warmup", "1", "--sample-steps", "3", "--sample-batch", "2",
                 "--sampler", "heun", "--sampler", "euler", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["shard_optimizer"] is True and report["input"] == "pixels"
    kinds = {(r["kind"], r.get("input", "")) for r in report["rows"]}
    assert ("train", "synthetic pixels, on device") in kinds
    assert {("sample", "3 heun steps, cfg 1.5"), ("sample", "3 euler steps, cfg 1.5")} <= kinds
    step = next(r for r in report["rows"] if r["kind"] == "train")
    assert step["setting"].startswith("b32 float32") and step["loss"] == step["loss"]


def test_paired_ratio_is_the_median_of_interleaved_pairs():
    from dit_jax.benchmark.suite import paired_ratio
    # ours 1 s, theirs 2 s, except one repetition hit by load on our side (4 s).
    r = paired_ratio([1.0, 1.0, 4.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.2, 1.8])
    assert r["vs_torch"] == pytest.approx(2.0) and r["vs_torch_pairs"] == 5
    assert (r["vs_torch_min"], r["vs_torch_max"]) == pytest.approx((0.5, 2.2))
    assert r["vs_torch_wide"]
    steady = paired_ratio([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert not steady["vs_torch_wide"] and steady["vs_torch"] == pytest.approx(2.0 / 1.0)
    with pytest.raises(ValueError, match="as many"):
        paired_ratio([1.0], [1.0, 2.0])


def test_table_shows_spread_and_flags_a_wide_one():
    from dit_jax.benchmark.suite import add_ratios, format_table
    base = dict(kind="train", impl="jax", batch=8, input="synthetic, on device", step_ms=100.0, img_s=80.0,
                flops_per_image=1.0, compile_s=1.0, peak_gib=None)
    steady = dict(base, setting="steady", paired_s={"jax": [0.1, 0.1, 0.1], "torch": [0.2, 0.21, 0.19]})
    noisy = dict(base, setting="noisy", paired_s={"jax": [0.1, 0.3, 0.1], "torch": [0.2, 0.2, 0.2]})
    torch_row = dict(base, impl="torch", setting="b8 float32 (CPU)", img_s=40.0)
    rows = [torch_row, steady]
    add_ratios(rows, 0.0, 1)
    table = format_table(rows)
    assert steady["vs_torch"] == pytest.approx(2.0) and "1.90-2.10 n=3" in table and "WIDE" not in table
    rows = [torch_row, noisy]
    add_ratios(rows, 0.0, 1)
    table = format_table(rows)
    assert noisy["vs_torch"] == pytest.approx(2.0) and "0.67-2.00 n=3 WIDE" in table
    # On 8 devices each runs the reference's one-device batch in those seconds: the same ratio per device
    # (the seconds were once multiplied by the device count).
    eight = dict(steady)
    add_ratios([torch_row, eight], 0.0, 8)
    assert eight["vs_torch"] == pytest.approx(2.0)
    assert "WIDE: the interleaved repetitions' ratios spread" in table


@pytest.mark.slow
def test_torch_session_times_one_repetition_per_request():
    import os

    from dit_jax.benchmark.reference import TorchSession
    model = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, mlp_ratio=4.0,
                 class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
    reference = os.path.join(os.path.dirname(__file__), "torch_reference")
    with TorchSession(dict(reference=reference, model=model, warmup=1, sample_steps=2, cfg_scale=1.5)) as session:
        assert session.train(2, 2) > 0 and session.train(2, 1) > 0  # built once, then timed again
        assert session.sample(2) > 0
        with pytest.raises(RuntimeError, match="KeyError"):
            session._ask(kind="train", steps=1)  # no batch: the server's error comes back as one line
        assert session.train(2, 1) > 0  # and it serves on
