"""The DiT model zoo: counts, FLOPs, initialisation, layouts, logical axes, input checks."""

import dataclasses
import functools
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models.params import stack_blocks
from dit_jax.models.dit import (LOGICAL_AXES, MODEL_NAMES, DiT, DiTConfig, abstract_params, dit_config,
                                example_inputs, forward_macs, init_params, param_count, reference_param_count)
from dit_jax.models.layers import sincos_2d_pos_embed, timestep_sinusoid

# The paper's Table 4: (forward GMACs, params in millions).
TABLE4 = {"DiT-S/8": (0.36, 33), "DiT-S/4": (1.41, 33), "DiT-S/2": (6.06, 33),
          "DiT-B/8": (1.42, 131), "DiT-B/4": (5.56, 130), "DiT-B/2": (23.01, 130),
          "DiT-L/8": (5.01, 459), "DiT-L/4": (19.70, 458), "DiT-L/2": (80.71, 458),
          "DiT-XL/8": (7.39, 676), "DiT-XL/4": (29.05, 675), "DiT-XL/2": (118.64, 675)}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_counts_match_paper_table4(name):
    cfg = dit_config(name)
    gmacs, mparams = TABLE4[name]
    assert abs(forward_macs(cfg) / 1e9 - gmacs) / gmacs < 0.01
    # The table's millions round the trainable count (the frozen position table excluded).
    assert round(param_count(cfg) / 1e6) == mparams
    # The fixed position table is a constant here, a frozen parameter in the reference.
    assert reference_param_count(cfg) - param_count(cfg) == cfg.num_tokens * cfg.hidden_size


def test_xl2_reference_count_exact():
    assert reference_param_count(dit_config("DiT-XL/2")) == 675_129_632
    # 512 px (64x64 latents): the paper's 524.6 GMACs.
    assert abs(forward_macs(dit_config("DiT-XL/2", input_size=64)) / 1e9 - 524.6) / 524.6 < 0.01


def test_models_command_prints_the_table(capsys):
    from dit_jax.cli import main
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "DiT-XL/2" in out and "675,129,632" in out and "118.62" in out


def test_param_counts_equal_reference_statement(reference):
    import torch
    models, _ = reference
    for name in MODEL_NAMES:
        with torch.device("meta"):
            ref = models.DiT_models[name]()
        assert sum(p.numel() for p in ref.parameters()) == reference_param_count(dit_config(name)), name


def test_macs_match_xla_cost_analysis():
    """The analytic MAC count against XLA's own count of the dot products (flops / 2)."""
    cfg = dit_config("S/4", input_size=16, num_classes=10)
    params = abstract_params(cfg)
    x, t, y = example_inputs(cfg, 1)
    lowered = jax.jit(lambda p: DiT(cfg).apply({"params": p}, x, t, y)).lower(params)
    flops = lowered.compile().cost_analysis()["flops"]
    # XLA counts elementwise ops too, so its number is a little higher; dots dominate.
    assert 1.0 <= flops / 2 / forward_macs(cfg) < 1.05


def test_names_parse_and_reject():
    assert dit_config("XL/2") == dit_config("DiT-XL/2") == dit_config("DiT_XL_2")
    with pytest.raises(ValueError, match="unknown model name 'DiT-XXL/2'"):
        dit_config("DiT-XXL/2")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        dit_config("S/8", input_size=36)
    with pytest.raises(ValueError, match="attention must be one of"):
        dit_config("S/2", attention="flash")
    with pytest.raises(ValueError, match="cudnn' needs dtype"):
        dit_config("S/2", attention="cudnn")
    with pytest.raises(ValueError, match="unknown DiT config keys"):
        DiTConfig.from_dict({"depthh": 3})


SMALL = dit_config("S/2", input_size=8, depth=3, num_classes=10)


@functools.cache
def small_params():
    """SMALL's initial parameters, made once for the file (init runs op by op, about a hundred operations,
    each compiled on its first use)."""
    return init_params(SMALL, jax.random.key(0))


# SMALL's jitted forward, shared by the tests that compare against it (one compiled program).
APPLY_SMALL = jax.jit(DiT(SMALL).apply)


def _random_inputs(cfg, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cfg.input_size, cfg.input_size, cfg.in_channels)).astype(np.float32)
    return x, rng.integers(0, 1000, batch), rng.integers(0, cfg.num_classes, batch)


def test_wrong_input_shape_is_clear():
    params = small_params()
    x = jnp.zeros((1, 16, 16, 4))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(B, 8, 8, 4\) NHWC"):
        DiT(SMALL).apply({"params": params}, x, jnp.zeros(1, int), jnp.zeros(1, int))


def test_initialisation_as_reference():
    params = init_params(dit_config("S/2", input_size=16), jax.random.key(1))
    b = params["blocks_0"]
    # adaLN-Zero: modulation and final layer start at zero, biases at zero.
    for leaf in (b["adaLN"]["kernel"], b["adaLN"]["bias"], params["final_linear"]["kernel"],
                 params["final_adaLN"]["kernel"], b["attn"]["qkv"]["bias"], b["mlp"]["fc1"]["bias"]):
        assert not np.any(np.asarray(leaf))
    # N(0, 0.02) label table and timestep MLP.
    for leaf in (params["y_embedder"]["embedding_table"], params["t_embedder"]["mlp_0"]["kernel"]):
        assert abs(float(np.std(leaf)) - 0.02) < 0.001
    # xavier_uniform with PyTorch's fans: bound sqrt(6 / (fan_in + fan_out)).
    d = 384
    for leaf, fan_in, fan_out in ((b["attn"]["qkv"]["kernel"], d, 3 * d), (b["attn"]["proj"]["kernel"], d, d),
                                  (b["mlp"]["fc1"]["kernel"], d, 4 * d), (params["x_embedder"]["kernel"], 16, d)):
        bound = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.98 * bound
        assert abs(float(np.std(leaf)) - bound / np.sqrt(3)) < 0.02 * bound


def test_pos_embed_is_fixed_sincos():
    emb = sincos_2d_pos_embed(8, 3)
    assert emb.shape == (9, 8) and emb.dtype == np.float32
    # Token (row 1, col 2): first half encodes the column, second half the row.
    omega = 1.0 / 10000 ** (np.arange(2) / 2.0)
    np.testing.assert_allclose(emb[5], np.concatenate([np.sin(2 * omega), np.cos(2 * omega),
                                                       np.sin(1 * omega), np.cos(1 * omega)]), rtol=1e-6)
    assert "pos_embed" not in small_params()


def test_timestep_sinusoid_cos_first():
    t = jnp.array([0.0, 3.0])
    emb = timestep_sinusoid(t, 8)
    freqs = np.exp(-np.log(10000) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]), rtol=1e-6)


def _randomise(params, seed=0):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [0.05 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def test_scan_and_remat_layouts_compute_the_same():
    params = _randomise(small_params())
    x, t, y = _random_inputs(SMALL)
    base = APPLY_SMALL({"params": params}, x, t, y)  # jitted: eager dispatch is slower here
    for scan, remat in ((True, "none"), (True, "full"), (False, "dots_saveable")):
        cfg = dataclasses.replace(SMALL, scan_blocks=scan, remat=remat)
        p = stack_blocks(params, cfg.depth) if scan else params
        assert jax.tree.structure(p) == jax.tree.structure(jax.eval_shape(partial(init_params, cfg), jax.random.key(0)))
        np.testing.assert_allclose(jax.jit(DiT(cfg).apply)({"params": p}, x, t, y), base, rtol=1e-5, atol=1e-5)


def test_every_parameter_has_logical_axis_names():
    for cfg in (SMALL, dataclasses.replace(SMALL, scan_blocks=True)):
        boxed = abstract_params(cfg, boxed=True)
        leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
        assert leaves and all(isinstance(v, nn.Partitioned) for v in leaves)
        for v in leaves:
            assert len(v.names) == len(v.value.shape)
            assert all(n is None or n in LOGICAL_AXES for n in v.names)


def test_label_dropout_uses_only_explicit_keys():
    params = _randomise(small_params())
    x, t, y = _random_inputs(SMALL, batch=64)
    cfg = dataclasses.replace(SMALL, class_dropout_prob=0.5)
    model = DiT(cfg)
    a = model.apply({"params": params}, x, t, y, train=True, rngs={"dropout": jax.random.key(3)})
    b = model.apply({"params": params}, x, t, y, train=True, rngs={"dropout": jax.random.key(3)})
    c = model.apply({"params": params}, x, t, y, train=True, rngs={"dropout": jax.random.key(4)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # force_drop selects the null class exactly.
    drop = jnp.arange(64) % 2 == 0
    forced = model.apply({"params": params}, x, t, y, force_drop=drop)
    null = model.apply({"params": params}, x, t, jnp.where(drop, cfg.num_classes, y))
    np.testing.assert_array_equal(forced, null)
    with pytest.raises(ValueError, match="null class"):
        DiT(dataclasses.replace(SMALL, class_dropout_prob=0.0)).apply(
            {"params": init_params(dataclasses.replace(SMALL, class_dropout_prob=0.0), jax.random.key(0))},
            x, t, y, force_drop=drop)


def test_bfloat16_compute_with_float32_params():
    cfg = dataclasses.replace(SMALL, dtype="bfloat16")
    params = _randomise(small_params())
    x, t, y = _random_inputs(SMALL)
    out16 = jax.jit(DiT(cfg).apply)({"params": params}, x, t, y)
    out32 = APPLY_SMALL({"params": params}, x, t, y)
    assert out16.dtype == jnp.float32  # bf16 inside, float32 out for the loss and the sampler
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(init_params(cfg, jax.random.key(0))))
    rel = float(jnp.abs(out16.astype(jnp.float32) - out32).max() / jnp.abs(out32).max())
    print(f"bf16 compute vs float32, max relative: {rel:.2e}")
    # Measured 9.4e-3 (2 CPU cores). The lower bound, a tenth of it, fails if bf16 is silently ignored.
    assert 9e-4 < rel < 0.05
    p16 = init_params(dataclasses.replace(SMALL, param_dtype="bfloat16"), jax.random.key(0))
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(p16))
