"""SiT's network and training update against the PyTorch statement of the official SiT code
(tests/sit_reference wrapping the DiT of tests/torch_reference), float32, on a tiny random model with
the zero-initialised layers randomised.

Checked: an official-format SiT checkpoint (bare EMA state dict, and train.py's dict) converted by
`dit-jax convert --from-torch` and back by `--to-torch` (bit-exact, and the converted forward, which
drops the variance half, agrees); the rows of `tools/compare_torch.py --reference-sit` (converted and
guided forward, the training loss of every path x prediction x weight, ODE and SDE steps, last steps,
a dopri5 solve against torchdiffeq); 5 steps of SiT's train.py update beside our jitted step. Each has
a negative control.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models.dit import DiT, dit_config
from dit_jax.parity.common import compare, format_table

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = dit_config("DiT-S/4", input_size=8, depth=2, num_classes=5, hidden_size=64, num_heads=2)
FORWARD_TOL = 5e-6   # measured about 3e-7 relative


@pytest.fixture(scope="module")
def sit_ref():
    from dit_jax.parity.sit import load_sit_reference
    return load_sit_reference(os.path.join(HERE, "sit_reference"), os.path.join(HERE, "torch_reference"))


@pytest.fixture(scope="module")
def sit_net(sit_ref):
    """The statement's SiT network with random weights (adaLN-zero and final layers randomised too)."""
    from dit_jax.parity.common import randomize_zero_layers
    from dit_jax.parity.sit import _backbone, sit_network
    torch.manual_seed(3)
    net = sit_network(sit_ref, CFG).eval()
    assert randomize_zero_layers(_backbone(net), 3) > 0
    return net


def _inputs(seed=0, batch=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, CFG.input_size, CFG.input_size, CFG.in_channels)).astype(np.float32)
    t = rng.uniform(0, 1, batch).astype(np.float32)    # SiT's continuous time, fed as it is
    y = rng.integers(0, CFG.num_classes, batch)
    return x, t, y


def _sit_forward(params, x, t, y):
    """Our SiT forward: the DiT on the converted weights, variance half dropped."""
    from dit_jax.transport.guidance import split_learned_sigma
    out = DiT(CFG).apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(y, jnp.int32))
    return split_learned_sigma(out, CFG.in_channels)


def _torch_forward(net, x, t, y):
    from dit_jax.parity.common import nchw, nhwc
    with torch.no_grad():
        return nhwc(net(nchw(x), torch.from_numpy(t), torch.from_numpy(y)))


def _convert(*args):
    from dit_jax.cli import main
    assert main(["convert", *args]) == 0


def test_sit_checkpoint_converts_both_ways(sit_ref, sit_net, tmp_path):
    """A released-style SiT checkpoint (bare EMA state dict with DiT's names) -> `dit-jax convert --from-torch`
    -> forward agrees with SiT's forward; `--to-torch` gives back the same tensors, which SiT's network loads
    strictly. A train.py checkpoint converts its 'ema' entry."""
    from dit_jax.parity.sit import sit_network
    from dit_jax.weights import load_weights
    sd = {k: v.clone() for k, v in sit_net.state_dict().items()}
    assert "x_embedder.proj.weight" in sd and not any(k.startswith("net.") for k in sd)
    released = tmp_path / "SiT-tiny.pt"
    torch.save(sd, released)
    _convert("--from-torch", str(released), "--num-heads", "2", "--out", str(tmp_path / "w"))
    params, cfg = load_weights(str(tmp_path / "w"))
    assert cfg.architecture() == CFG.architecture() and cfg.learn_sigma and cfg.out_channels == 2 * CFG.in_channels
    x, t, y = _inputs()
    row = compare("converted forward", _sit_forward(params, x, t, y), _torch_forward(sit_net, x, t, y), FORWARD_TOL)
    print(f"\nconverted SiT forward: max abs {row.max_abs:.3e}, rel {row.rel:.2e}")
    assert row.ok, row
    assert _sit_forward(params, x, t, y).shape == x.shape     # SiT's forward returns in_channels

    _convert("--to-torch", str(tmp_path / "w"), "--out", str(tmp_path / "back.pt"))
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    again = sit_network(sit_ref, CFG).eval()
    again.load_state_dict(back, strict=True)
    np.testing.assert_array_equal(_torch_forward(again, x, t, y), _torch_forward(sit_net, x, t, y))

    # train.py's checkpoint: {'model', 'ema', 'opt', 'args'}; the EMA is what SiT's sample.py loads.
    model_sd = {k: v + 0.01 if k != "pos_embed" else v for k, v in sd.items()}
    torch.save({"model": model_sd, "ema": sd, "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                "args": argparse.Namespace(model="SiT-S/4", path_type="Linear")}, tmp_path / "0005000.pt")
    _convert("--from-torch", str(tmp_path / "0005000.pt"), "--num-heads", "2", "--out", str(tmp_path / "ema"))
    _convert("--from-torch", str(tmp_path / "0005000.pt"), "--key", "model", "--num-heads", "2",
             "--out", str(tmp_path / "raw"))
    ema, _ = load_weights(str(tmp_path / "ema"))
    raw, _ = load_weights(str(tmp_path / "raw"))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), ema, params))
    # Negative control: the 'model' entry (weights 0.01 off) misses SiT's EMA forward.
    assert not compare("raw", _sit_forward(raw, x, t, y), _torch_forward(sit_net, x, t, y), FORWARD_TOL).ok


@pytest.fixture(scope="module")
def comparison_rows(sit_ref):
    from dit_jax.parity.sit import run_sit_comparison
    return run_sit_comparison(sit_ref, CFG, batch=2, seed=1)


def test_sit_comparison_rows(comparison_rows):
    """The --reference-sit rows on the statement: every row within its tolerance."""
    rows = comparison_rows
    print("\n" + format_table(rows))
    names = [r.name for r in rows]
    assert names[:2] == ["converted forward (sigma half dropped)", "guided forward (cfg 1.5)"]
    assert sum(n.startswith("loss ") for n in names) == 27          # 3 paths x 3 predictions x 3 weights
    assert sum(n.startswith("ODE ") for n in names) == 6
    assert sum(n.startswith("SDE ") and " step, " in n for n in names) == 12   # 6 forms x euler, heun
    assert sum(n.startswith("SDE last step") for n in names) == 3
    assert names[-1] == "dopri5 solve vs torchdiffeq" and rows[-1].tol == 2e-3
    assert all(r.ok for r in rows), format_table(rows)
    assert all(r.rel < 2e-6 for r in rows[:-1]), format_table(rows)   # measured below 4e-7


def test_sit_comparison_detects_a_difference(sit_ref, monkeypatch):
    """A conversion off in one bias fails the forward rows (the check is not vacuous; the loss and step
    functions have their own negative controls in tests/test_transport_*.py)."""
    import dit_jax.parity.sit as parity_sit
    from dit_jax.parity.sit import run_sit_comparison
    real = parity_sit.from_torch

    def off_by_a_little(sd, cfg):
        params, cfg = real(sd, cfg)
        params["blocks_1"]["mlp"]["fc2"]["bias"] = params["blocks_1"]["mlp"]["fc2"]["bias"] + 1e-3
        return params, cfg

    monkeypatch.setattr(parity_sit, "from_torch", off_by_a_little)
    rows = run_sit_comparison(sit_ref, CFG, batch=2, seed=1, parts=("forward",))
    assert [r.name for r in rows] == ["converted forward (sigma half dropped)", "guided forward (cfg 1.5)"]
    assert not any(r.ok for r in rows), format_table(rows)


@pytest.mark.slow   # compiles and runs a training step
def test_sit_training_matches_train_py(sit_ref):
    """5 steps of SiT's train.py update (AdamW lr 1e-4, EMA 0.9999, loss mean) beside our jitted step built
    by build_train_step for objective='sit', with the same x0, t and label-drop draws."""
    from dit_jax.parity.sit import run_sit_training_comparison
    lines = []
    rows = run_sit_training_comparison(sit_ref, CFG, steps=5, log=lines.append)
    print("\n" + format_table(rows))
    assert [r.name for r in rows] == [f"step {k} loss" for k in range(1, 6)] + ["params after 5 steps",
                                                                                 "EMA after 5 steps"]
    assert all(r.ok for r in rows), format_table(rows)
    ours = [float(line.split()[4]) for line in lines if line.startswith("step ")]
    assert len(set(ours)) == 5   # the batches and the weights really change from step to step


@pytest.mark.slow
def test_sit_training_detects_a_different_time(sit_ref, monkeypatch):
    """Negative control: our step's loss taken at t + 0.01 (the same draws otherwise) misses the loss row."""
    import dit_jax.train.step as step
    from dit_jax.parity.sit import run_sit_training_comparison
    real = step.transport_losses
    monkeypatch.setattr(step, "transport_losses", lambda objective, fn, x, *, t, x0: real(objective, fn, x, t=t + 0.01,
                                                                                         x0=x0))
    rows = run_sit_training_comparison(sit_ref, CFG, steps=1)
    assert not rows[0].ok, format_table(rows)


def test_compare_tool_sit_bad_input(tmp_path, capsys):
    """tools/compare_torch.py --reference-sit: a path without SiT's code, or --solvers beside it, is one error line
    and exit code 2; without any reference too."""
    import importlib.util
    path = os.path.join(os.path.dirname(HERE), "tools", "compare_torch.py")
    spec = importlib.util.spec_from_file_location("compare_torch_tool_sit", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for argv, message in ((["--reference-sit", str(tmp_path)], "has no models.py and transport/"),
                          (["--reference-sit", os.path.join(HERE, "sit_reference"), "--solvers"], "drop it"),
                          ([], "pass --reference")):
        assert tool.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
