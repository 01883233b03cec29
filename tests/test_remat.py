"""Remat as named policies with scan over blocks: the same loss and gradients, less memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models.params import stack_blocks, unstack_blocks
from dit_jax.models.dit import REMAT, DiT, DiTConfig, dit_config, init_params

SMALL = dit_config("S/2", input_size=8, depth=2, hidden_size=64, num_heads=2, num_classes=10)


def _grad(cfg):
    """(loss, gradients) of the model's forward under `cfg`'s remat, and the compiled temporaries."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 8, 4)).astype(np.float32)
    t, y = rng.integers(0, 1000, 16), rng.integers(0, 10, 16)
    params = init_params(SMALL, jax.random.key(0))
    params = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.key(1), a.shape), params)  # no zero layers
    if cfg.scan_blocks:
        params = stack_blocks(params, cfg.depth)

    def loss(p):
        return jnp.mean(DiT(cfg).apply({"params": p}, x, t, y) ** 2)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    value, grads = compiled(params)
    if cfg.scan_blocks:
        grads = unstack_blocks(grads, cfg.depth)
    return float(value), grads, compiled.memory_analysis().temp_size_in_bytes


@pytest.fixture(scope="module")
def results():
    cases = [("none", False)] + [(policy, True) for policy in REMAT]
    return {(policy, scan): _grad(dataclasses.replace(SMALL, remat=policy, scan_blocks=scan))
            for policy, scan in cases}


def test_every_policy_gives_the_same_step(results):
    loss, grads, _ = results["none", False]
    for (policy, scan), (value, g, _) in results.items():
        assert value == pytest.approx(loss, rel=1e-5), (policy, scan)
        assert jax.tree.structure(g) == jax.tree.structure(grads)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"{policy} scan={scan}")


def test_full_remat_needs_less_temporary_memory(results):
    none, full = results["none", True][2], results["full", True][2]
    print(f"compiled temporaries (scan over blocks): remat none {none} B, full {full} B")
    assert full < none


def test_remat_names_and_old_booleans():
    assert DiTConfig(remat=True).remat == "full" and DiTConfig(remat=False).remat == "none"
    assert DiTConfig.from_dict({**SMALL.to_dict(), "remat": True}).remat == "full"  # configs stored as booleans
    with pytest.raises(ValueError, match="remat must be one of"):
        DiTConfig(remat="sometimes")
