"""FD_DINOv2 as an evaluator of a real `dit-jax train` run on two hosts (two jax.distributed processes on
127.0.0.1, 2 CPU devices each): the score each host logs is finite, the same on both hosts, and equal to
what `dit-jax evaluate --metrics fd_dinov2` computes offline from the same samples and reference batch.

No DINOv2 weights exist on this machine, so the test makes them: a state dict in the official layout of
dinov2_vitl14_pretrain.pth from random tensors, and its .npz export (`python -m
dit_jax.convert.dinov2_torch`). The evaluator always loads the ViT-L/14 architecture (that is what users
get, and what this test leaves unchanged in dit_jax); the full ViT-L/14 takes a minute to compile and 4
s an image on this machine's CPU (docs/dinov2.md), too slow for a test of the training path. So the test
processes shrink the ViT-L entry of the architecture table (dit_jax.models.dinov2._SIZES) in width and
depth only: 32 wide, 2 blocks, 2 heads. Everything else is the detector's: patch 14, the 37x37 position
table interpolated to 16x16 at 224 px by the plain models' rule, LayerScale, the GELU MLP, no registers,
CLS-token features, EDM2's resize and normalisation, and the loader's checks of the file against that
(shrunk) architecture. The parity of the full-size detector is tests/test_dinov2.py's and
tools/compare_torch.py's."""

import io
import json
import math
import os

import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.models import dinov2
from dit_jax.sampling.grids import to_uint8
from helpers import TINY_FLAGS, cli_on_two_processes, finish_all

pytestmark = pytest.mark.slow  # a two-process training run

SMALL_L = (32, 2, 2, "mlp")   # (embed, depth, heads, ffn) in place of ViT-L's (1024, 24, 16, "mlp")
NUM_SAMPLES, BATCH = 40, 20
PRELUDE = """
import os
import numpy as np
from dit_jax.models import dinov2
dinov2._SIZES["l"] = {small!r}   # the test's smaller detector (the module docstring says why)
from dit_jax.train import evaluators
own_score, calls = evaluators.FDDinov2Kind.score, []
def score(self, images, labels, section):   # what this host scored, kept for the offline comparison
    import jax
    scores = own_score(self, images, labels, section)
    calls.append(scores)
    np.savez(os.path.join({scored!r}, f"host{{jax.process_index()}}_{{len(calls)}}.npz"),
             images=images, labels=labels, fd_dinov2=scores["fd_dinov2"])
    return scores
evaluators.FDDinov2Kind.score = score
"""


@pytest.fixture(scope="module", autouse=True)
def small_detector():
    """This process's detector shrunk as the training processes' (see the module docstring)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(dinov2._SIZES, "l", SMALL_L)
        yield


def _random_pth(path, seed):
    """A random state dict in the official layout of dinov2_vitl14_pretrain.pth (of the shrunk ViT-L):
    norms and LayerScale near 1, everything else small noise."""
    import torch

    from dit_jax.convert.dinov2_torch import expected_shapes
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in expected_shapes(dinov2.dinov2_config("dinov2-vit-l")).items():
        near_one = name.endswith(("norm1.weight", "norm2.weight", "gamma")) or name == "norm.weight"
        state[name] = torch.from_numpy((near_one + rng.normal(0, 0.05, shape)).astype(np.float32))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The random detector as the official .pth and as its .npz export (in a folder, as a user passes
    it), a second random detector, and a reference batch of 64 real digits (arr_0, uint8 RGB)."""
    from dit_jax.convert import dinov2_torch
    from dit_jax.data.digits import digits_arrays
    root = tmp_path_factory.mktemp("fd")
    pth = _random_pth(str(root / "pth" / "dinov2_vitl14_pretrain.pth"), 0)
    os.makedirs(root / "npz")
    assert dinov2_torch.main([pth, str(root / "npz" / "dinov2_vitl14_pretrain.npz")]) == 0
    other = _random_pth(str(root / "other" / "dinov2_vitl14_pretrain.pth"), 1)
    ref = str(root / "ref.npz")
    np.savez(ref, arr_0=np.repeat(digits_arrays()[0][:64], 3, axis=-1))
    return dict(pth=pth, npz_dir=str(root / "npz"), other=other, ref=ref, root=root)


@pytest.fixture(scope="module")
def trained(files):
    """`dit-jax train` with the fd_dinov2 evaluator on (after step 2 and at the end, step 4), typed on
    two hosts; (workdir, each process's output, {(host, evaluation): what it scored})."""
    root = files["root"]
    workdir, scored = str(root / "run"), root / "scored"
    scored.mkdir()
    evals = {"kind": "fd_dinov2", "reference": files["ref"], "dinov2": files["npz_dir"], "every": 2,
             "num_samples": NUM_SAMPLES, "batch_size": BATCH, "steps": "4"}
    # ema_decay 0: the EMA is the weights, so the evaluations of steps 2 and 4 score different samples;
    # one checkpoint, the last (the saves are not what this test is about)
    argv = ["train", f"--workdir={workdir}", *TINY_FLAGS, "--config.total_steps=4", "--config.ema_decay=0.0",
            "--config.checkpoint_every=100", "--config.mesh.data=2", "--config.mesh.fsdp=2",
            *[f"--config.evals.fid.{k}={v}" for k, v in evals.items()]]
    outs = finish_all(cli_on_two_processes(argv, prelude=PRELUDE.format(small=SMALL_L, scored=str(scored))),
                      timeout=300)
    got = {}
    for name in sorted(os.listdir(scored)):
        host, call = name[len("host"):-len(".npz")].split("_")
        with np.load(scored / name) as z:
            got[int(host), int(call)] = {k: z[k] for k in z.files}
    return workdir, outs, got


def _logged(workdir):
    """({step: FD_DINOv2 logged in metrics.jsonl}, the final one of eval_scores.json)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        periodic = {row["step"]: row["eval/fid/fd_dinov2"] for row in map(json.loads, f) if "eval/fid/fd_dinov2" in row}
    with open(os.path.join(workdir, "eval_scores.json")) as f:
        final = json.load(f)
    return periodic, final


def _offline(samples, detector, reference, out):
    """`dit-jax evaluate REFERENCE SAMPLES --metrics fd_dinov2` of [-1, 1] one-channel samples written as
    the ADM .npz of their uint8 RGB (the conversion the evaluator makes)."""
    path = str(out) + ".npz"
    np.savez(path, arr_0=to_uint8(np.repeat(samples, 3, axis=-1)))
    assert main(["evaluate", reference, path, "--metrics", "fd_dinov2", "--dinov2", detector, "--batch-size",
                 str(BATCH), "--out", str(out) + ".json"]) == 0
    with open(str(out) + ".json") as f:
        return json.load(f)["fd_dinov2"]


def test_every_host_scores_the_same_finite_fd_dinov2(trained):
    workdir, outs, got = trained
    assert sorted(got) == [(0, 1), (0, 2), (1, 1), (1, 2)], sorted(got)   # step 2 and the end, on both hosts
    for call in (1, 2):
        a, b = got[0, call], got[1, call]
        assert a["images"].shape == (NUM_SAMPLES, 8, 8, 1)
        np.testing.assert_array_equal(a["images"], b["images"])
        assert a["fd_dinov2"] == b["fd_dinov2"] and math.isfinite(float(a["fd_dinov2"]))
    assert not np.array_equal(got[0, 1]["images"], got[0, 2]["images"])   # other EMA weights, other samples
    periodic, final = _logged(workdir)
    assert sorted(periodic) == [2] and periodic[2] == float(got[0, 1]["fd_dinov2"])
    assert final["step"] == 4 and final["eval/fid/fd_dinov2"] == float(got[0, 2]["fd_dinov2"])
    assert "FD_DINOv2" in outs[0] and "EMA quality" not in outs[1]   # process 0 reports, every host scores


def test_logged_fd_dinov2_is_the_offline_evaluation(trained, files, tmp_path):
    """The logged score of each evaluation equals `dit-jax evaluate` of the same samples with the
    official-layout .pth (training read its .npz export); negative controls: the other evaluation's
    samples, and another random detector, give other values."""
    workdir, _, got = trained
    periodic, final = _logged(workdir)
    logged = {1: periodic[2], 2: final["eval/fid/fd_dinov2"]}
    for call in (1, 2):
        offline = _offline(got[0, call]["images"], files["pth"], files["ref"], tmp_path / f"s{call}")
        print(f"\nevaluation {call}: logged {logged[call]!r}, offline {offline!r}, "
              f"relative difference {abs(offline - logged[call]) / abs(logged[call]):.1e}")
        assert offline == pytest.approx(logged[call], rel=1e-6)
    assert abs(logged[1] - logged[2]) > 1e-3 * abs(logged[2])   # the step-2 samples score otherwise
    other = _offline(got[0, 2]["images"], files["other"], files["ref"], tmp_path / "other")
    print(f"another random detector: {other!r} against {logged[2]!r}")
    assert abs(other - logged[2]) > 1e-3 * abs(logged[2])
