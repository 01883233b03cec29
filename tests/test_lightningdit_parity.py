"""LightningDiT's options against the PyTorch statement of hustvl/LightningDiT (tests/lightningdit_reference),
float32, tiny random models (every zero-initialised tensor and norm weight randomised), weights converted
torch -> ours and ours -> torch (dit_jax/convert/lightningdit_torch.py).

Checked: the forward and the guided forward for five option combinations (all off, QK-norm + RoPE,
RMSNorm + SwiGLU + no shift, all five, LightningDiT's release config), the state dict written back
(bit-exact), the training terms with injected draws (lognorm x cosine) and an Euler solve with a timestep
shift. Negative controls: RoPE with rows and columns swapped, QK-norm over all heads' channels at once.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models import layers
from dit_jax.models.dit import DiTConfig
from dit_jax.parity import format_table

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")
pytest.importorskip("scipy")

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-5   # the bound; measured rows are 1e-7 .. 6e-7 relative (docs/lightningdit.md)
BASE = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
COMBOS = {
    "none": dict(),
    "qknorm+rope": dict(use_qknorm=True, use_rope=True),
    "rmsnorm+swiglu+wo_shift": dict(use_rmsnorm=True, use_swiglu=True, wo_shift=True),
    "all": dict(use_qknorm=True, use_rmsnorm=True, use_swiglu=True, use_rope=True, wo_shift=True, learn_sigma=True),
    "release": dict(use_rmsnorm=True, use_swiglu=True, use_rope=True, learn_sigma=False),
}


def config(**options) -> DiTConfig:
    return DiTConfig(**{"learn_sigma": False, **BASE, **options})


@pytest.fixture(scope="module")
def ref():
    from dit_jax.parity.lightningdit import load_lightningdit_reference
    return load_lightningdit_reference(os.path.join(HERE, "lightningdit_reference"))


def rows_of(ref, cfg, parts=("forward",)):
    from dit_jax.parity.lightningdit import run_lightningdit_comparison
    rows = run_lightningdit_comparison(ref, cfg, batch=3, parts=parts, tol=TOL)
    print(format_table(rows))
    return rows


@pytest.mark.parametrize("combo", list(COMBOS))
def test_forward_matches_the_statement(ref, combo):
    rows = rows_of(ref, config(**COMBOS[combo]))
    assert len(rows) == 4 and all(r.ok for r in rows), format_table(rows)
    assert rows[2].max_abs == 0.0   # the learned tensors written back are the reference's, bit for bit


def test_training_terms_and_shifted_ode_match_the_statement(ref):
    rows = rows_of(ref, config(**COMBOS["release"]), parts=("loss", "ode"))
    names = " ".join(r.name for r in rows)
    assert "cos_loss (lognorm=True cosine=True)" in names and "train.py loss" in names and "timestep_shift" in names
    assert all(r.ok for r in rows), format_table(rows)


def _swapped_rope_tables(head_dim, grid, theta=10000.0):
    """Rows and columns exchanged: the first half of each head rotates with the column index."""
    cos, sin = ROPE_TABLES(head_dim, grid, theta)
    swap = lambda a: a.reshape(grid, grid, head_dim).transpose(1, 0, 2).reshape(grid * grid, head_dim)
    return swap(cos), swap(sin)


ROPE_TABLES = layers.rope_tables


class _JointNorm(nn.Module):
    """LayerNorm with the statistics over every head's channels at once (the wrong dimension)."""
    axis_name: str
    eps: float = 1e-5
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones_init(), (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros_init(), (x.shape[-1],))
        mean = jnp.mean(x, axis=(-2, -1), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(-2, -1), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


def _wrong_dim_norm(rms, axis_name, *, layer_norm_eps=1e-5, name, **kw):
    return _JointNorm(axis_name, layer_norm_eps, name=name, **kw)


@pytest.mark.parametrize("bug", ["rope on the wrong axis", "qk-norm over the wrong dimension"])
def test_negative_controls_fail_the_tolerance(ref, monkeypatch, bug):
    if bug == "rope on the wrong axis":
        monkeypatch.setattr(layers, "rope_tables", _swapped_rope_tables)
        cfg = config(use_rope=True)
    else:
        monkeypatch.setattr(layers, "make_norm", _wrong_dim_norm)
        cfg = config(use_qknorm=True)
    rows = rows_of(ref, cfg)
    forward = rows[0]
    assert not forward.ok and forward.rel > 10 * TOL, format_table(rows)


@pytest.mark.parametrize("combo", ["all", "release", "qknorm+rope"])
def test_conversion_reads_the_options_off_the_state_dict(ref, combo):
    from dit_jax.convert.lightningdit_torch import from_torch, infer_config, lightningdit_kwargs
    cfg = config(**COMBOS[combo])
    net = ref.models.LightningDiT(**lightningdit_kwargs(cfg))
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    inferred = infer_config(sd, num_heads=cfg.num_heads)
    assert inferred.to_dict() == cfg.to_dict()
    flipped = dict(COMBOS[combo], use_qknorm=not cfg.use_qknorm)
    with pytest.raises(ValueError, match="use_qknorm: checkpoint"):
        from_torch(sd, config(**flipped))
    with pytest.raises(ValueError, match="unexpected names"):
        from_torch({**sd, "blocks.0.extra.weight": np.zeros(3)}, cfg)


def test_dit_jax_convert_from_lightningdit_and_back(ref, tmp_path):
    """`dit-jax convert --from-lightningdit` (a train.py checkpoint: its EMA) and `--to-torch`, which writes
    LightningDiT's format for a model with its options: the learned tensors come back bit for bit."""
    from dit_jax.cli import main
    from dit_jax.convert.lightningdit_torch import lightningdit_kwargs
    from dit_jax.parity.lightningdit import randomize
    cfg = config(**COMBOS["all"])
    net = ref.models.LightningDiT(**lightningdit_kwargs(cfg))
    randomize(net, 0)
    pt = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "ema": net.state_dict(), "opt": {}}, pt)
    assert main(["convert", "--from-lightningdit", str(pt), "--out", str(tmp_path / "w"), "--num-heads", "4"]) == 0
    assert main(["convert", "--to-torch", str(tmp_path / "w"), "--out", str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt")
    want = net.state_dict()
    assert sorted(back) == sorted(want)
    for k in want:
        if "feat_rope" not in k and k != "pos_embed":
            assert torch.equal(back[k], want[k]), k
