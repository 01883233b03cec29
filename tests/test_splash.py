"""attention="splash": Pallas splash attention on TPUs, XLA attention elsewhere.

Numerics: the TPU kernel itself, run by Pallas' interpreter on CPU, against jax.nn.dot_product_attention
(forward and the gradients of q, k, v) at DiT-like shapes in float32. Measured max relative errors
(max |a - b| / max |b|): forward 1.1e-6 (H=72), 6.6e-7 (H=64), 4.7e-7 (T=64, padded to 128; measured at B=2); gradients
1.2e-6 / 5.3e-7 / 5.3e-7. Lowering: for TPU devices (libtpu's compile-only topology) the program holds
the Mosaic kernel and compiles; on CPU it holds XLA attention.
"""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models import splash as splash_mod
from dit_jax.models.dit import DiT, dit_config, init_params
from dit_jax.models.splash import block_sizes, splash_attention, splash_local

TOL = 1e-5  # ~10x the largest measured relative error (1.2e-6)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _qkvw(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(4)]


def _forward_and_grads(attend, q, k, v, w):
    loss = lambda q, k, v: jnp.sum(attend(q, k, v) * w)  # noqa: E731  (a random cotangent w)
    return attend(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.fixture(scope="module", params=[(2, 256, 2, 72), (2, 256, 2, 64), (1, 64, 2, 64)],
                ids=["XL-head72-T256", "head64-T256", "padded-T64"])
def interpreted(request):
    q, k, v, w = _qkvw(request.param)
    ours = _forward_and_grads(lambda *a: splash_local(*a, interpret=True), q, k, v, w)
    xla = _forward_and_grads(jax.nn.dot_product_attention, q, k, v, w)
    return (q, k, v), ours, xla


@pytest.mark.slow  # Pallas' interpreter: 20-40 s per shape on 2 loaded cores
def test_splash_kernel_in_interpret_mode_matches_xla_attention(interpreted):
    _, (out, grads), (ref, ref_grads) = interpreted
    assert out.shape == ref.shape
    assert _rel(out, ref) < TOL
    for name, g, r in zip("qkv", grads, ref_grads):
        assert _rel(g, r) < TOL, name


@pytest.mark.slow
def test_negative_control_unscaled_attention_is_far_from_the_kernel(interpreted):
    """The comparison can fail: attention without the 1/sqrt(H) scale differs by far more than TOL."""
    (q, k, v), (out, _), _ = interpreted
    unscaled = jax.nn.dot_product_attention(q, k, v, scale=1.0)
    assert _rel(out, unscaled) > 1e-2


@pytest.mark.parametrize("seq_len, block", [(256, 256), (1024, 512), (64, 128), (384, 128), (4096, 512)])
def test_block_sizes_are_lane_multiples_that_divide_the_padded_sequence(seq_len, block):
    b = block_sizes(seq_len)
    assert (b.block_q, b.block_kv, b.block_q_dkv, b.block_kv_dkv, b.block_q_dq, b.block_kv_dq) == (block,) * 6
    assert splash_mod.padded_length(seq_len) % block == 0 and block % 128 == 0


def test_off_tpu_splash_is_xla_attention_and_says_so_once(caplog):
    q, k, v, _ = _qkvw((2, 16, 2, 8))
    splash_mod._log_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger=splash_mod.__name__):
        text = jax.jit(splash_attention).lower(q, k, v).as_text()
        out = splash_attention(q, k, v)
        splash_attention(q, k, v)
    assert "tpu_custom_call" not in text
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.nn.dot_product_attention(q, k, v)))
    lines = [r.getMessage() for r in caplog.records if "splash" in r.getMessage()]
    assert len(lines) == 1 and "using XLA attention" in lines[0], lines


@pytest.mark.slow  # init and two compiles of a model: 45 s on 2 loaded cores
def test_model_with_splash_on_cpu_equals_the_xla_model():
    cfg = dit_config("S/2", input_size=8, depth=1, num_classes=10, hidden_size=32, num_heads=2)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    t, y = np.array([3, 700]), np.array([1, 9])
    ref = jax.jit(DiT(cfg).apply)({"params": params}, x, t, y)
    out = jax.jit(DiT(dataclasses.replace(cfg, attention="splash")).apply)({"params": params}, x, t, y)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def _tpu_devices(name):
    pytest.importorskip("libtpu")
    from dit_jax.jobs.compile import parse_topology, target_devices
    return target_devices(parse_topology(name))


def test_lowered_for_a_tpu_the_step_holds_the_splash_kernel_and_compiles():
    """Forward and backward of splash attention under a data x tensor mesh of v5e-8 (compile-only chips):
    the Mosaic kernel is in the program (shard_map per device), and XLA's TPU compiler accepts it."""
    import flax.linen as nn
    from jax.sharding import NamedSharding, PartitionSpec as P

    from dit_jax.parallel.sharding import LOGICAL_RULES
    devices = np.asarray(_tpu_devices("v5e-8")).reshape(4, 1, 2)
    mesh = jax.sharding.Mesh(devices, ("data", "fsdp", "tensor"))
    shape = jax.ShapeDtypeStruct((8, 256, 4, 72), jnp.bfloat16,
                                 sharding=NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None)))

    def loss(q, k, v):
        return jnp.sum(splash_attention(q, k, v).astype(jnp.float32))

    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape)
    text = lowered.as_text()
    assert "tpu_custom_call" in text and "dot_product_attention" not in text
    compiled = lowered.compile()
    assert compiled.memory_analysis().temp_size_in_bytes > 0


@pytest.mark.slow  # one AOT compile of a whole train step
def test_dit_jax_compile_builds_the_splash_train_step_for_a_tpu_topology():
    """The real (tiny) train step with attention='splash', compiled by `dit-jax compile` for v5e-1."""
    import os
    import re
    import subprocess
    import sys
    pytest.importorskip("libtpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "dit_jax.cli", "compile", "--topology", "v5e-1", "--max-tries", "1",
           "--config", "configs/demo.py", "--config.model.hidden_size=32", "--config.model.depth=1",
           "--config.model.num_heads=2", "--config.batch_size=8", "--config.model.attention=splash"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    m = re.search(r"per device: arguments ([\d.]+) \w+, temporaries ([\d.]+) \w+, .* peak ([\d.]+) \w+", res.stdout)
    assert m and float(m.group(2)) > 0, res.stdout
    assert "verdict: fits" in res.stdout
