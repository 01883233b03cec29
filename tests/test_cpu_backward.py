"""The backward pass of the unrolled block stack compiles to linear, not quadratic, work on XLA:CPU.

Without a barrier on the residual stream's cotangent at each block, XLA:CPU fused the whole chain of
cheap elementwise ops that forms it (every later block's LayerNorm-backward and gate terms) into each
consumer, so the largest fusion grew with depth (231 operands at DiT-S/2, a gradient 3.5x slower).
These tests read the compiled HLO, not a clock: the size of the largest fusion must not grow with
depth, and the same model without the barrier (the negative control) must show the growth.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dit_jax.models.dit as dit_module
from dit_jax.models.dit import DiT, DiTConfig, init_params
from dit_jax.models.layers import cotangent_barrier

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, num_heads=2, num_classes=10)


def fusion_operand_counts(hlo_text: str) -> list[int]:
    """Operands of every fusion instruction in a compiled module's text."""
    counts = []
    for line in hlo_text.splitlines():
        if " fusion(" in line:
            operands = line.split(" fusion(", 1)[1].split("), kind=", 1)[0]
            counts.append(len(re.findall(r"%[\w.\-]+", operands)))
    return counts


def _grad_fn(depth: int):
    cfg = DiTConfig(depth=depth, **TINY)
    model = DiT(cfg)
    params = init_params(cfg, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    t, y = jnp.array([3, 900]), jnp.array([1, 7])
    return jax.grad(lambda p: jnp.mean(model.apply({"params": p}, x, t, y) ** 2)), params


def _largest_fusion(depth: int) -> int:
    grad, params = _grad_fn(depth)
    return max(fusion_operand_counts(jax.jit(grad).lower(params).compile().as_text()))


@pytest.fixture(scope="module")
def largest_fusions():
    """{(barrier, depth): operands of the largest fusion in the compiled gradient}."""
    if jax.default_backend() != "cpu":
        pytest.skip("XLA:CPU's fusion is what is checked")
    out = {}
    for barrier in (True, False):
        for depth in (2, 6):
            patched = cotangent_barrier if barrier else (lambda v: v)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(dit_module, "cotangent_barrier", patched)
                out[barrier, depth] = _largest_fusion(depth)
    return out


def test_backward_fusions_do_not_grow_with_depth(largest_fusions):
    # Measured: 21 operands at depth 2 and 6 alike (and at DiT-S/2's depth 12).
    assert largest_fusions[True, 6] == largest_fusions[True, 2]
    assert largest_fusions[True, 6] <= 30


def test_without_the_barrier_the_fusions_grow(largest_fusions):
    """Negative control: the metric sees the quadratic form (about 20 more operands per block)."""
    assert largest_fusions[False, 6] >= largest_fusions[False, 2] + 40
    assert largest_fusions[False, 6] > 2 * largest_fusions[True, 6]


def test_barrier_changes_no_value():
    grad, params = _grad_fn(3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dit_module, "cotangent_barrier", lambda v: v)
        plain = jax.jit(grad)(params)
    fenced = jax.jit(grad)(params)
    for a, b in zip(jax.tree.leaves(fenced), jax.tree.leaves(plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    # Forward-mode differentiation goes through (the barrier is on the tangent, not a custom_vjp).
    x = jnp.arange(6.0)
    out, tangent = jax.jvp(lambda v: cotangent_barrier(jnp.sin(v)), (x,), (jnp.ones_like(x),))
    expected_out, expected_tangent = jax.jvp(jnp.sin, (x,), (jnp.ones_like(x),))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected_out))
    np.testing.assert_array_equal(np.asarray(tangent), np.asarray(expected_tangent))


@pytest.mark.parametrize("platform,barriers", [("cpu", 1), ("cuda", 0), ("tpu", 0)])
def test_barrier_is_lowered_for_cpu_only(platform, barriers):
    """Accelerators get the plain identity: their programs stay as they were."""
    grad = jax.grad(lambda v: jnp.sum(cotangent_barrier(jnp.sin(v)) ** 2))
    text = jax.jit(grad).trace(jnp.ones(4)).lower(lowering_platforms=(platform,)).as_text()
    assert text.count("stablehlo.optimization_barrier") == barriers
