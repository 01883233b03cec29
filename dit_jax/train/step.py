"""One training step: the reference's loss, AdamW, EMA; a pure function of (state, batch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dit_jax.diffusion.gaussian import GaussianDiffusion
from dit_jax.models.dit import DiT
from dit_jax.train.state import TrainState


def step_keys(rng: jax.Array, step: jax.Array):
    """Per-step keys for timesteps, noise and label dropout: a function of (seed, step) only,
    so a resumed run draws exactly what the uninterrupted run would have."""
    k = jax.random.fold_in(rng, step)
    return jax.random.split(k, 3)


def train_step(state: TrainState, batch: dict, *, model: DiT, diffusion: GaussianDiffusion,
               tx: optax.GradientTransformation, ema_decay: float):
    """batch: {'image': (B, H, W, C) float in the model's space, 'label': (B,) int}."""
    x0, y = batch["image"].astype(jnp.float32), batch["label"]
    t_key, noise_key, drop_key = step_keys(state.rng, state.step)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, diffusion.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)

    def loss_fn(params):
        def model_fn(x_t, t_model):
            return model.apply({"params": params}, x_t, t_model, y, train=True, rngs={"dropout": drop_key})
        terms = diffusion.training_losses(model_fn, x0, t, noise)
        return jnp.mean(terms["loss"]), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: e * ema_decay + p.astype(e.dtype) * (1 - ema_decay), state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    for k in ("mse", "vb"):
        if k in terms:
            metrics[k] = jnp.mean(terms[k])
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    return new_state, metrics
