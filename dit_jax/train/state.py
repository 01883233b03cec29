"""The train state (params, AdamW state, EMA, step, rng) and its creation."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dit_jax.models.dit import DiT, DiTConfig, example_inputs


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array  # raw uint32[2] key data: plain arrays checkpoint everywhere
    # Post-hoc EMA: one params-shaped tree per config.phema.stds (train/phema.py); () when off.
    phema: Any = ()


def make_optimizer(optim) -> optax.GradientTransformation:
    """AdamW as the paper (lr 1e-4, no weight decay, default betas), optional clipping and warmup.

    The state has the same structure whatever the warmup/clipping values (a schedule and a clip
    step are always there, as no-ops when off), so a run can resume with them changed.
    """
    lr = optax.linear_schedule(0.0 if optim.warmup_steps else optim.lr, optim.lr, max(optim.warmup_steps, 1))
    clip = optim.grad_clip if optim.grad_clip > 0 else float("inf")
    return optax.chain(optax.clip_by_global_norm(clip),
                       optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))


def create_state(model_config: DiTConfig, tx: optax.GradientTransformation, seed: int,
                 init_params=None, repa=None, phema_profiles: int = 0) -> TrainState:
    """A fresh state (boxed with logical axis names when params are initialised here).

    EMA starts as a copy of the params, as the reference (update_ema with decay 0).
    `init_params` (e.g. converted official weights) replaces the random initialisation. `repa` (a
    train.repa.RepaSpec) adds REPA's projectors to the params (trained, EMA'd and checkpointed with them).
    `phema_profiles` power-function EMAs start as copies too (EDM2's PowerFunctionEMA).
    """
    key = jax.random.PRNGKey(seed)
    init_key, rng = jax.random.split(key)
    if init_params is None:
        params = DiT(model_config).init({"params": init_key}, *example_inputs(model_config))["params"]
    else:
        params = init_params
    if repa is not None:
        from dit_jax.train.repa import with_projectors
        params = with_projectors(params, repa, model_config, init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), rng=rng,
                      phema=tuple(jax.tree.map(jnp.copy, params) for _ in range(phema_profiles)))


def abstract_state(model_config: DiTConfig, tx, seed: int = 0, repa=None, phema_profiles: int = 0) -> TrainState:
    """Shapes of the state with nn.Partitioned boxes kept (for shardings)."""
    return jax.eval_shape(lambda: create_state(model_config, tx, seed, repa=repa, phema_profiles=phema_profiles))
