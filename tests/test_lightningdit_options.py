"""LightningDiT's model options (DiTConfig.use_qknorm, use_rmsnorm, use_swiglu, use_rope, wo_shift) on a tiny
model: all off is today's DiT parameter tree (its outputs: test_lightningdit_parity.py); each option adds
exactly its parameters; with all five on, scanned and unrolled blocks and the remat policies give the same
values and gradients, bf16 runs, the splash path runs (XLA off TPU) and lowers for TPU chips with the Mosaic
kernel; QK-norm and RoPE reach q and k before the attention call; the new parameters' PartitionSpecs and
shards on fsdp and tensor meshes (8 CPU devices, in a subprocess)."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models import layers
from dit_jax.models.dit import DiT, DiTConfig, init_params
from dit_jax.models.params import stack_blocks
from dit_jax.models.rope import apply_rope, rope_tables

pytestmark = pytest.mark.slow   # starts a subprocess (the 8-device mesh); about 2 min on 2 cores

ALL = dict(use_qknorm=True, use_rmsnorm=True, use_swiglu=True, use_rope=True, wo_shift=True)
BASE = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
X = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
T, Y = np.array([10.0, 700.0], np.float32), np.array([1, 9])

DIT_BLOCK = {"adaLN/bias": (384,), "adaLN/kernel": (64, 384), "attn/proj/bias": (64,),
             "attn/proj/kernel": (4, 16, 64), "attn/qkv/bias": (3, 4, 16), "attn/qkv/kernel": (64, 3, 4, 16),
             "mlp/fc1/bias": (256,), "mlp/fc1/kernel": (64, 256), "mlp/fc2/bias": (64,), "mlp/fc2/kernel": (256, 64)}
DIT_TOP = {"final_adaLN/bias", "final_adaLN/kernel", "final_linear/bias", "final_linear/kernel", "t_embedder/mlp_0/bias",
           "t_embedder/mlp_0/kernel", "t_embedder/mlp_2/bias", "t_embedder/mlp_2/kernel", "x_embedder/bias",
           "x_embedder/kernel", "y_embedder/embedding_table"}


def cfg(**kw) -> DiTConfig:
    return dataclasses.replace(BASE, **kw)


def flat(tree) -> dict:
    return {jax.tree_util.keystr(p, simple=True, separator="/"): tuple(v.shape)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def perturbed(config, seed=0):
    """Random params with the zero-initialised layers and the norm scales moved off their init values."""
    params = init_params(config, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


def test_all_off_is_the_dit_parameter_tree():
    tree = flat(init_params(BASE, jax.random.key(0)))
    block = {k.split("/", 1)[1]: v for k, v in tree.items() if k.startswith("blocks_0/")}
    assert block == DIT_BLOCK
    assert {k for k in tree if not k.startswith("blocks_")} == DIT_TOP


@pytest.mark.parametrize("option,added,removed", [
    ("use_qknorm", {"attn/q_norm/scale", "attn/q_norm/bias", "attn/k_norm/scale", "attn/k_norm/bias"}, set()),
    ("use_rmsnorm", {"norm1/scale", "norm2/scale", "final_norm/scale"}, set()),
    ("use_swiglu", {"mlp/w12/kernel", "mlp/w12/bias", "mlp/w3/kernel", "mlp/w3/bias"},
     {"mlp/fc1/kernel", "mlp/fc1/bias", "mlp/fc2/kernel", "mlp/fc2/bias"}),
    ("use_rope", set(), set()),
    ("wo_shift", set(), set()),
])
def test_each_option_adds_exactly_its_parameters(option, added, removed):
    base, tree = flat(init_params(BASE, jax.random.key(0))), flat(init_params(cfg(**{option: True}), jax.random.key(0)))
    strip = lambda keys: {k.replace("blocks_0/", "") for k in keys if not k.startswith("blocks_1/")}  # noqa: E731
    assert strip(set(tree) - set(base)) == added
    assert strip(set(base) - set(tree)) == removed
    if option == "use_swiglu":   # int(2/3 * int(64 * 4)) = 170, as LightningDiT's rule (no rounding)
        assert tree["blocks_0/mlp/w12/kernel"] == (64, 2, 170) and tree["blocks_0/mlp/w3/kernel"] == (170, 64)
    if option == "wo_shift":
        assert tree["blocks_0/adaLN/kernel"] == (64, 256) and tree["final_adaLN/kernel"] == (64, 128)


def test_rmsnorm_qknorm_has_no_bias():
    tree = flat(init_params(cfg(use_qknorm=True, use_rmsnorm=True), jax.random.key(0)))
    assert "blocks_0/attn/q_norm/scale" in tree and "blocks_0/attn/q_norm/bias" not in tree


@pytest.fixture(scope="module")
def all_on():
    config = cfg(**ALL)
    params = perturbed(config)
    fn = lambda c, p: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda q: jnp.sum(DiT(c).apply({"params": q}, X, T, Y) ** 2)))(p)
    out = jax.jit(DiT(config).apply)({"params": params}, X, T, Y)
    return config, params, out, fn(config, params), fn


@pytest.mark.parametrize("scan,remat", [(True, "none"), (True, "full"), (False, "full"), (False, "dots_saveable"),
                                        (True, "dots_with_no_batch_dims_saveable"), (True, "offload_dots")])
def test_all_options_scanned_unrolled_and_remat_compute_the_same(all_on, scan, remat):
    config, params, _, (value, grads), fn = all_on
    if remat == "offload_dots" and jax.default_backend() == "cpu":
        pytest.skip("offload to pinned host memory needs an accelerator")
    c = dataclasses.replace(config, scan_blocks=scan, remat=remat)
    p = stack_blocks(params, config.depth) if scan else params
    v2, g2 = fn(c, p)
    if scan:
        g2 = dict(g2)
        for i in range(config.depth):
            g2[f"blocks_{i}"] = jax.tree.map(lambda a: a[i], g2["blocks"]["block"])
        del g2["blocks"]
    np.testing.assert_allclose(v2, value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


def test_all_options_in_bfloat16_and_splash(all_on):
    config, params, out, _, _ = all_on
    assert float(np.abs(out).max()) > 1e-2   # the perturbed model's output is not the zero-init output
    bf16 = jax.jit(DiT(dataclasses.replace(config, dtype="bfloat16", scan_blocks=True)).apply)(
        {"params": stack_blocks(params, config.depth)}, X, T, Y)
    assert bf16.dtype == jnp.float32
    rel = float(np.abs(np.asarray(bf16) - np.asarray(out)).max() / np.abs(out).max())
    assert rel < 5e-2, rel
    splash = jax.jit(DiT(dataclasses.replace(config, attention="splash")).apply)({"params": params}, X, T, Y)
    np.testing.assert_array_equal(np.asarray(splash), np.asarray(out))   # off TPU: the XLA attention


def test_qknorm_and_rope_reach_q_and_k_before_the_kernel(monkeypatch):
    """The arrays handed to jax.nn.dot_product_attention (the XLA and cuDNN call) are normalised per head
    (RMSNorm with unit scale: mean square 1, which a rotation keeps) and rotated by the RoPE tables."""
    seen = []
    kernel = jax.nn.dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((np.asarray(q), np.asarray(k)))
        return kernel(q, k, v, **kw)
    monkeypatch.setattr(layers.jax.nn, "dot_product_attention", spy)
    config = cfg(depth=1, use_qknorm=True, use_rmsnorm=True)
    params = init_params(config, jax.random.key(0))
    DiT(config).apply({"params": params}, X, T, Y)
    DiT(dataclasses.replace(config, use_rope=True)).apply({"params": params}, X, T, Y)
    (q, k), (q_rope, k_rope) = seen[-2:]   # init_params traced a first call
    np.testing.assert_allclose(np.mean(q_rope ** 2, -1), 1.0, rtol=1e-4)
    cos, sin = rope_tables(16, 4)
    np.testing.assert_allclose(q_rope, apply_rope(q, cos, sin), atol=1e-6)
    np.testing.assert_allclose(k_rope, apply_rope(k, cos, sin), atol=1e-6)
    assert not np.allclose(q_rope, q, atol=1e-3)


def test_rope_needs_a_head_dimension_divisible_by_4():
    with pytest.raises(ValueError, match="use_rope needs a head dimension"):
        cfg(hidden_size=72, num_heads=12, use_rope=True)   # head dim 6


PROBE = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
from dit_jax.models.dit import DiTConfig, abstract_params
from dit_jax.parallel.mesh import make_mesh
from dit_jax.parallel.sharding import logical_shardings
out = {}
for mesh_name, axes in (("fsdp", dict(data=2, fsdp=4)), ("tensor", dict(data=4, tensor=2))):
    for scan in (False, True):
        config = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                           num_classes=10, scan_blocks=scan, use_qknorm=True, use_rmsnorm=True, use_swiglu=True,
                           use_rope=True, wo_shift=True)
        abstract = abstract_params(config, boxed=True)
        shardings, _ = logical_shardings(abstract, make_mesh(**axes))
        shapes = {jax.tree_util.keystr(p, simple=True, separator="/"): a.shape
                  for p, a in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]}
        out[f"{mesh_name}/{scan}"] = {
            key: {"spec": [list(a) if isinstance(a, tuple) else a for a in s.spec],
                  "shard": list(s.shard_shape(shapes[key]))}
            for key, s in ((jax.tree_util.keystr(p, simple=True, separator="/"), s)
                           for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0])}
print("RESULT " + json.dumps(out))
"""

# The rules give the new block leaves these specs on any mesh (unscanned; the scanned layout puts the
# replicated 'layers' axis first); what a device holds then depends on the mesh: (fsdp 4, tensor 2) shards.
EXPECTED = {  # leaf: (spec, shard on the fsdp mesh, shard on the tensor mesh)
    "norm1/scale": (["fsdp"], [16], [64]), "norm2/scale": (["fsdp"], [16], [64]),
    "attn/q_norm/scale": ([None], [16], [16]), "attn/k_norm/scale": ([None], [16], [16]),
    "mlp/w12/kernel": (["fsdp", None, "tensor"], [16, 2, 170], [64, 2, 85]),
    "mlp/w12/bias": ([None, "tensor"], [2, 170], [2, 85]),
    "mlp/w3/kernel": (["tensor", "fsdp"], [170, 16], [85, 64]), "mlp/w3/bias": (["fsdp"], [16], [64]),
    "adaLN/kernel": (["fsdp", "tensor"], [16, 256], [64, 128]),   # wo_shift: 4 x 64 columns
}


def _padded(spec, n):
    return list(spec) + [None] * (n - len(spec))


@pytest.fixture(scope="module")
def specs():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(next(s for s in res.stdout.splitlines() if s.startswith("RESULT "))[7:])


@pytest.mark.parametrize("mesh", ["fsdp", "tensor"])
@pytest.mark.parametrize("scan", [False, True])
def test_new_parameters_partition_specs(specs, mesh, scan):
    got = specs[f"{mesh}/{scan}"]
    column = 1 if mesh == "fsdp" else 2
    for leaf, want in EXPECTED.items():
        entry = got[f"blocks/block/{leaf}" if scan else f"blocks_0/{leaf}"]
        spec = ([None] if scan else []) + want[0]
        assert _padded(entry["spec"], len(spec)) == spec, (leaf, entry)
        assert entry["shard"] == ([2] if scan else []) + want[column], (leaf, entry)
    final = got["final_norm/scale"]
    assert final["spec"] == ["fsdp"] and final["shard"] == ([16] if mesh == "fsdp" else [64])


def test_all_options_lower_for_a_tpu_with_the_splash_kernel():
    """The gradient of the model with every option, attention='splash', bf16, scanned and rematerialised,
    lowered for v5e-8 chips (libtpu's compile-only topology) from this CPU host: QK-norm and RoPE sit in
    front of the Mosaic splash kernel, and XLA attention is not used."""
    pytest.importorskip("libtpu")
    import flax.linen as nn
    from jax.sharding import NamedSharding, PartitionSpec as P

    from dit_jax.jobs.compile import parse_topology, target_devices
    from dit_jax.models.dit import abstract_params
    from dit_jax.parallel.sharding import LOGICAL_RULES
    mesh = jax.sharding.Mesh(np.asarray(target_devices(parse_topology("v5e-8"))).reshape(4, 1, 2),
                             ("data", "fsdp", "tensor"))
    config = DiTConfig(input_size=32, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=2,
                       num_classes=10, attention="splash", dtype="bfloat16", scan_blocks=True, remat="full", **ALL)
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())),
                          abstract_params(config))
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    x = jax.ShapeDtypeStruct((8, 32, 32, 4), jnp.float32, sharding=batch)
    t, y = (jax.ShapeDtypeStruct((8,), d, sharding=batch) for d in (jnp.float32, jnp.int32))
    loss = lambda p, x, t, y: jnp.sum(DiT(config).apply({"params": p}, x, t, y) ** 2)  # noqa: E731
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        text = jax.jit(jax.grad(loss)).lower(params, x, t, y).as_text()
    assert "tpu_custom_call" in text and "dot_product_attention" not in text
