"""Is a train state sound? A checksum to store beside each checkpoint, and non-finite detection.

Both run on device, so at XL/2 scale nothing is copied to the host but a few integers: the
checksum is an exact uint32 sum, independent of how the state is sharded, so a state saved from
one mesh and restored onto another gives the same value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.train.exit_codes import Diverged


class NonFiniteLoss(Diverged):
    """The loss, the gradient norm or the state became NaN/Inf: training cannot go on from here
    (`dit-jax train` exits with the diverged code, 3)."""


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


@jax.jit
def _first_bad(first, loss, grad_norm, step):
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jnp.where((first == 0) & ~ok, step, first)


class NonFiniteWatch:
    """Remembers on device the first step whose loss or gradient norm was not finite.

    `update` adds no host sync to the step; `check` fetches one integer, so the loop calls it only
    where it waits anyway (log steps, before saves).
    """

    def __init__(self):
        self.first = np.int32(0)

    def update(self, metrics: dict, step: int) -> None:
        self.first = _first_bad(self.first, metrics["loss"], metrics["grad_norm"], np.int32(step))

    def check(self, workdir: str, last_saved: int | None) -> None:
        step = int(jax.device_get(self.first))
        if step:
            raise NonFiniteLoss(non_finite_message(f"the loss or gradient norm is NaN/Inf at step {step}",
                                                   workdir, last_saved))


def non_finite_message(what: str, workdir: str, last_saved: int | None) -> str:
    kept = (f"the last good checkpoint (step {last_saved}) is kept" if last_saved is not None
            else "no checkpoint was written")
    return (f"{what}: training stopped, {kept}. Lower --config.optim.lr, set --config.optim.grad_clip or "
            f"--config.optim.warmup_steps, then rerun with --workdir {workdir} to resume, or a new workdir")
