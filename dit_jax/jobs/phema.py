"""`dit-jax phema`: the weights of any EMA length, reconstructed after training from the snapshots
of the power-function EMA profiles a run tracked (config.phema), as EDM2's reconstruct_phema.py.

The output is a weights directory (`sample --weights`, `convert --to-torch`, `init_weights` read it).
Differences from EDM2, both deliberate: snapshots are stored in float32, not float16, and the weighted
sum is accumulated in float64 on the host before the float32 result is written (EDM2 sums in float32
and writes float16).
"""

from __future__ import annotations

import jax
import numpy as np

from dit_jax.exit_codes import BadInput
from dit_jax.train import phema, phema_snapshots
from dit_jax.configs.base import to_dit_config


def plan(snapshots: list[dict], std: float, step: int | None, max_fit_error: float):
    """(inputs [(step, profile index, std)], coefficients X[:, 0], fit error, output step), or BadInput."""
    if not snapshots:
        raise BadInput("--workdir holds no post-hoc EMA snapshots (WORKDIR/phema/): train with "
                       "--config.phema.stds=(0.05,0.1) --config.phema.snapshot_every=N first")
    steps = [m["step"] for m in snapshots]
    out_step = max(steps) if step is None else step
    if out_step not in steps:
        raise BadInput(f"--step {step}: the reconstruction time must be one of the snapshots' steps {steps}")
    inputs = [(m["step"], i, s) for m in snapshots if 0 < m["step"] <= out_step for i, s in enumerate(m["stds"])]
    tracked = sorted({s for _, _, s in inputs})
    if not 0 < std < phema.MAX_STD:
        raise BadInput(f"--std {std}: a relative standard deviation must be in (0, {phema.MAX_STD}) (EDM2's range; "
                       f"the run tracked {tracked})")
    in_ofs = np.asarray([t for t, _, _ in inputs], np.float64)
    in_std = np.asarray([s for _, _, s in inputs], np.float64)
    X = phema.solve_coefficients(in_ofs, in_std, out_step, std)
    error = float(phema.fit_error(in_ofs, in_std, out_step, std, X)[0])
    if not error <= max_fit_error:
        grid = np.round(np.arange(0.005, phema.MAX_STD, 0.005), 3)
        ok = grid[phema.fit_error(in_ofs, in_std, out_step, grid) <= max_fit_error]
        reach = f"stds {ok.min()}..{ok.max()} are" if len(ok) else "no std is"
        raise BadInput(f"--std {std} is out of reach of the tracked profiles {tracked} in {len(steps)} snapshots up "
                       f"to step {out_step}: its reconstruction is {error:.1%} off in L2 (limit --max-fit-error "
                       f"{max_fit_error}); {reach} within the limit (or snapshot more often, or track other stds)")
    return inputs, X[:, 0], error, out_step


def reconstruct(workdir: str, std: float, out: str, *, step: int | None = None, max_fit_error: float = 0.1,
                force: bool = False, log=print) -> str:
    """Write the weights of profile `std` at `step` (default: the last snapshot) to `out`."""
    from dit_jax.weights import save_weights
    snapshots = phema_snapshots.list_snapshots(workdir)
    inputs, coefs, error, out_step = plan(snapshots, std, step, max_fit_error)
    log(f"reconstructing std {std} at step {out_step} from {len(inputs)} snapshots (L2 error of the "
        f"response {error:.2e}); coefficients {np.array2string(coefs, precision=4, max_line_width=200)}")
    total = None
    for (t, i, _), c in zip(inputs, coefs):
        tree = jax.tree.map(lambda a: np.asarray(a, np.float64) * c, phema_snapshots.load_profile(workdir, t, i))
        total = tree if total is None else jax.tree.map(np.add, total, tree)
    params = jax.tree.map(lambda a: a.astype(np.float32), total)
    meta = next(m for m in snapshots if m["step"] == out_step)
    path = save_weights(out, params, to_dit_config(meta["model"]), force=force)
    log(f"wrote {path} (objective {meta.get('objective', 'ddpm')!r}: `dit-jax sample --weights {path}"
        + (" --objective sit`)" if meta.get("objective") == "sit" else "`)"))
    return path
