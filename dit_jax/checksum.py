"""Exact checksums of arrays, computed on device: an uint32 sum per leaf, independent of how the leaf is
sharded, so a state saved from one mesh and restored onto another (or weights sampled on any number of
hosts) gives the same value. Checkpoints store them; sample shards record the weights' checksums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_WORD = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """Sum of the leaf's bit patterns, each weighted by (2 * flat index + 1), modulo 2**32.

    The weights make a moved block count as a change. They are built from per-axis iotas rather
    than a flattening reshape, which would regather a sharded leaf.
    """
    x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    words = jax.lax.bitcast_convert_type(x, _WORD[x.dtype.itemsize]).astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= x.shape[axis]
    return jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)


@jax.jit
def _fingerprint(state):
    sums = jax.tree.map(_leaf_checksum, state)
    floats = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return sums, jnp.all(jnp.stack(floats)) if floats else jnp.array(True)


def fingerprint(state) -> tuple[dict[str, int], bool]:
    """({leaf path: checksum}, whether every floating-point value is finite)."""
    sums, finite = jax.device_get(_fingerprint(state))
    paths = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {jax.tree_util.keystr(path): int(v) for path, v in paths}, bool(finite)


def mismatches(stored: dict[str, int], actual: dict[str, int]) -> list[str]:
    """Leaf paths whose checksum differs (or that exist on one side only)."""
    return sorted(k for k in stored.keys() | actual.keys() if stored.get(k) != actual.get(k))
