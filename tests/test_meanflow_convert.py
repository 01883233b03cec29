"""Official MeanFlow checkpoints -> dit-jax weights (dit_jax/convert/meanflow_flax.py), on random parameters
written in the official Flax layout (tests/meanflow_reference/statement.py: official_tree): the converted
forward u(z, t, h, y) against the statement's network, the checkpoint on disk through `dit-jax convert
--from-meanflow`, and the MF-B/4 and MF-XL/2 trees' shapes against our models'."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.convert.meanflow_flax import config_from_official, convert
from dit_jax.exit_codes import BadInput
from dit_jax.models.dit import DiT, abstract_params

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "meanflow_reference"))
import statement  # noqa: E402

SHAPE = dict(depth=2, hidden=32, heads=2, patch=2, channels=4, classes=10)
TOL = 1e-5   # relative to the largest output magnitude; measured ~2e-7


def _inputs(seed=0, b=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 8, 8, 4)).astype(np.float32)
    t = rng.uniform(size=b).astype(np.float32)
    h = (t * rng.uniform(size=b)).astype(np.float32)
    y = np.array([0, 3, 9, 10, 5][:b], np.int32)   # 10: the null class
    return x, t, h, y


def _ours(params, config, x, t, h, y):
    return np.asarray(DiT(config).apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(y),
                                        h=jnp.asarray(h)))


def _theirs(tree, x, t, h, y):
    with jax.enable_x64(True):
        f64 = lambda a: jnp.asarray(np.asarray(a, np.float64))  # noqa: E731
        return np.asarray(jax.jit(statement.network, static_argnums=5)(
            statement.to64(tree), f64(x), f64(t), f64(h), jnp.asarray(y), SHAPE["heads"]))


def test_converted_forward_matches_the_statement():
    tree = statement.official_tree(5, **SHAPE, time_scale=4.0)
    params, config = convert(tree, input_size=8, num_heads=SHAPE["heads"])
    assert config.second_time_input and not config.learn_sigma and config.num_classes == SHAPE["classes"]
    x, t, h, y = _inputs()
    ref = _theirs(tree, x, t, h, y)
    err = np.max(np.abs(_ours(params, config, x, t, h, y) - ref)) / np.max(np.abs(ref))
    print(f"converted forward {err:.1e}")
    assert err < TOL
    # Negative controls: t and h swapped; the h embedder's weights taken from t's.
    assert np.max(np.abs(_ours(params, config, x, h, t, y) - ref)) / np.max(np.abs(ref)) > 100 * TOL
    swapped = dict(params, h_embedder=params["t_embedder"])
    assert np.max(np.abs(_ours(swapped, config, x, t, h, y) - ref)) / np.max(np.abs(ref)) > 100 * TOL


def test_checkpoint_on_disk_converts_through_the_cli(tmp_path, capsys):
    """A TrainState-like checkpoint (params, ema_params, step) as the official save_checkpoint writes it."""
    from flax.training import checkpoints
    from dit_jax.weights import load_weights
    raw = statement.official_tree(6, **SHAPE)
    ema = statement.official_tree(7, **SHAPE)
    ckpt = str(tmp_path / "official")
    checkpoints.save_checkpoint(ckpt, {"step": 10, "params": raw, "ema_params": ema, "opt_state": {}}, step=10)
    x, t, h, y = _inputs(1)
    for key, tree in (("ema", ema), ("model", raw)):
        out = str(tmp_path / f"w_{key}")
        assert main(["convert", "--from-meanflow", ckpt, "--out", out, "--key", key, "--sample-size", "8",
                     "--num-heads", "2"]) == 0
        params, config = load_weights(out)
        ref = _theirs(tree, x, t, h, y)
        assert np.max(np.abs(_ours(params, config, x, t, h, y) - ref)) / np.max(np.abs(ref)) < TOL
    capsys.readouterr()
    assert main(["convert", "--from-meanflow", str(tmp_path / "w_ema"), "--out", str(tmp_path / "again")]) == 2
    assert "error:" in capsys.readouterr().err



def _official_shapes(depth, hidden, patch, classes=1000, channels=4):
    d = hidden
    lin = lambda i, o: {"_flax_linear": {"kernel": (i, o), "bias": (o,)}}  # noqa: E731
    temb = {"mlp": {"layers_0": lin(256, d), "layers_2": lin(d, d)}}
    blocks = {f"layers_{i}": {"adaLN_modulation": {"layers_1": lin(d, 6 * d)},
                              "attn": {"qkv": lin(d, 3 * d), "proj": lin(d, d)},
                              "mlp": {"fc1": lin(d, 4 * d), "fc2": lin(4 * d, d)}} for i in range(depth)}
    net = {"x_embedder": {"proj": {"kernel": (patch, patch, channels, d), "bias": (d,)}},
           "t_embedder": temb, "h_embedder": temb,
           "y_embedder": {"embedding_table": {"_flax_embedding": {"embedding": (classes + 1, d)}}},
           "blocks": blocks, "final_layer": {"adaLN_modulation": {"layers_1": lin(d, 2 * d)},
                                             "linear": lin(d, patch * patch * channels)}}
    return {"params": {"net": net}}


@pytest.mark.parametrize("name,depth,hidden,patch,params_m", [("MF-B/4", 12, 768, 4, 131), ("MF-XL/2", 28, 1152, 2, 676)])
def test_official_model_shapes_convert_to_ours(name, depth, hidden, patch, params_m):
    tree = _official_shapes(depth, hidden, patch)
    tree = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s), tree, is_leaf=lambda s: isinstance(s, tuple))
    params, config = convert(tree)
    assert (config.depth, config.hidden_size, config.patch_size, config.num_heads, config.input_size) == (
        depth, hidden, patch, {768: 12, 1152: 16}[hidden], 32)
    want = abstract_params(config)
    assert jax.tree.structure(params) == jax.tree.structure(want)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
    count = sum(a.size for a in jax.tree.leaves(params))
    assert round(count / 1e6) == params_m, count   # the paper's parameter counts


def test_not_a_meanflow_tree_is_bad_input():
    with pytest.raises(BadInput, match="not an official MeanFlow parameter tree"):
        convert({"model": {}})
    with pytest.raises(BadInput, match="give num_heads"):
        config_from_official(statement.official_tree(0, **dict(SHAPE, hidden=40, heads=2))["net"])
