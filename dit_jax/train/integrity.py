"""Is a train state sound? A checksum to store beside each checkpoint, and non-finite detection.

Both run on device, so at XL/2 scale nothing is copied to the host but a few integers: the
checksum is an exact uint32 sum, independent of how the state is sharded, so a state saved from
one mesh and restored onto another gives the same value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.checksum import fingerprint, mismatches  # noqa: F401 -- checkpoints verify with these
from dit_jax.exit_codes import Diverged


class NonFiniteLoss(Diverged):
    """The loss, the gradient norm or the state became NaN/Inf: training cannot go on from here
    (`dit-jax train` exits with the diverged code, 3)."""


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
