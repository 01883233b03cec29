"""`dit-jax export-weights`: a training run's EMA (or raw) params -> a weights directory, which
`sample --weights`, `--config.init_weights` and `convert --to-torch` read."""

from __future__ import annotations


def export_weights(workdir: str, out: str, step: int | None = None, raw: bool = False,
                   force: bool = False) -> tuple[str, int]:
    """The params of `workdir` at `step` (default: the latest) written to `out`; (its path, the step)."""
    from dit_jax import storage
    from dit_jax.train.checkpoint import load_ema
    from dit_jax.weights import save_weights
    checkpoints = storage.resolve(workdir) / "checkpoints"
    if not checkpoints.is_dir():
        raise FileNotFoundError(f"{workdir} is not a training run (no checkpoints/ in it): pass the --workdir "
                                "of a `dit-jax train` run")
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    if step is not None and step not in steps:
        raise ValueError(f"{workdir} has no checkpoint at step {step}; it has steps {steps}")
    which = "params" if raw else "ema_params"
    params, config, step = load_ema(workdir, step, params_key=which)
    return save_weights(out, params, config, force=force), step
