"""One training step: the reference's loss, AdamW, EMA; a pure function of (state, batch)."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dit_jax.data.preprocess import to_float_on_device
from dit_jax.diffusion.gaussian import GaussianDiffusion
from dit_jax.meanflow import objective as meanflow
from dit_jax.transport.guidance import split_learned_sigma
from dit_jax.transport.transport import Transport, sample_time, training_losses as transport_losses
from dit_jax.models.dit import DiT
from dit_jax.train import phema
from dit_jax.train.state import TrainState

INPUT_MODES = ("", "encode", "dataset")


def step_keys(rng: jax.Array, step: jax.Array):
    """Per-step keys for timesteps, noise, label dropout and the VAE posterior sample: a function of
    (seed, step) only, so a resumed run draws exactly what the uninterrupted run would have."""
    k = jax.random.fold_in(rng, step)
    return jax.random.split(k, 4)


def model_input(batch: dict, key: jax.Array, mode: str, vae_params: Any = None, vae_config: Any = None,
                latent_scale: float = 0.18215) -> jax.Array:
    """x0 for the diffusion loss, converted to float32 here, on the device: the host sends what it
    reads (uint8 pixels, float16 latents), a quarter or half of float32's bytes.

    "": pixels in [-1, 1]. "encode": the reference's `vae.encode(x).latent_dist.sample() * 0.18215`
    inside the step. "dataset": the same posterior sample from a latent dataset's stored mean/std.
    """
    if mode in ("", "encode"):
        image = batch["image"]
        image = to_float_on_device(image) if image.dtype == jnp.uint8 else image.astype(jnp.float32)
    if mode == "":
        return image
    if mode == "encode":
        from dit_jax.models.vae import AutoencoderKL
        mean, logvar = AutoencoderKL(vae_config).apply({"params": vae_params}, image, method="encode")
        std = jnp.exp(0.5 * logvar)
        return latent_scale * (mean + std * jax.random.normal(key, mean.shape, jnp.float32))
    if mode == "dataset":
        mean = batch["mean"].astype(jnp.float32)
        return latent_scale * (mean + batch["std"].astype(jnp.float32) * jax.random.normal(key, mean.shape, jnp.float32))
    raise ValueError(f"input mode must be one of {INPUT_MODES}, got {mode!r}")


def draw_time(objective: GaussianDiffusion | Transport, key: jax.Array, batch: int) -> jax.Array:
    """Training times: DDPM's integer timesteps uniform in [0, T); SiT's continuous t ~ U[t0, t1] (or
    LightningDiT's logit-normal t with transport.use_lognorm)."""
    if isinstance(objective, Transport):
        return sample_time(objective, key, batch)
    return jax.random.randint(key, (batch,), 0, objective.num_timesteps)


def objective_terms(objective: GaussianDiffusion | Transport, model_fn, x0, t, noise) -> dict:
    """The objective's per-example loss terms for data x0 at times t with noise. SiT (whose names are
    x1 for data and x0 for noise) regresses the first half of a learned-sigma output, as its model's
    forward drops the variance channels."""
    if isinstance(objective, Transport):
        channels = x0.shape[-1]
        return transport_losses(objective, lambda xt, tt: split_learned_sigma(model_fn(xt, tt), channels), x0,
                                t=t, x0=noise)
    return objective.training_losses(model_fn, x0, t, noise)


def _meanflow_loss_fn(objective, model: DiT, x0, y, draws: dict):
    """MeanFlow's loss of the params. Its network calls take train=False: MeanFlow drops classes itself."""
    def loss_fn(params):
        def u_fn(z, t, h, labels):
            return model.apply({"params": params}, z, t, labels, h=h)
        terms = meanflow.loss_terms(objective, u_fn, x0, y, draws, model.config.null_class)
        return jnp.mean(terms["loss"]), terms
    return loss_fn


def train_step(state: TrainState, batch: dict, vae_params: Any = None, *, model: DiT,
               objective: GaussianDiffusion | Transport,
               tx: optax.GradientTransformation, ema_decay: float, input_mode: str = "", vae_config: Any = None,
               latent_scale: float = 0.18215, repa: Any = None, phema_exps: tuple[float, ...] = ()):
    """batch: {'image': (B, H, W, C) uint8, or float in [-1, 1]} or a latent dataset's {'mean', 'std'}
    (float16 or float32), plus 'label' (B,).

    objective: the run's Gaussian diffusion (the paper's hybrid loss), SiT's transport or MeanFlow
    (whose draws are {'t', 'r', 'noise', 'drop'}: dit_jax.meanflow.objective.draw).

    batch['draws'] = {'t': (B,) int (float for SiT), 'noise': x0's shape, 'drop': (B,) bool label-drop mask}, when
    present, replaces the step's own random draws (to run the same update as another implementation
    on the same randomness); without it the step draws them from (state.rng, state.step).

    repa (a train.repa.RepaSpec): REPA's loss in place of the objective's; the third argument is then
    {"vae": VAE params or None, "encoders": the frozen encoders' params}, the batch also holds the uint8
    'image' the encoders read, and draws may carry 'zs' (the encoders' features).
    phema_exps: the power-function exponents of the post-hoc EMA profiles in state.phema.
    """
    if repa is not None:
        return _repa_update(state, batch, vae_params, model=model, tx=tx, ema_decay=ema_decay, input_mode=input_mode,
                            vae_config=vae_config, latent_scale=latent_scale, repa=repa, phema_exps=phema_exps)
    y = batch["label"]
    draws = batch.get("draws")
    t_key, noise_key, drop_key, latent_key = step_keys(state.rng, state.step)
    x0 = model_input(batch, latent_key, input_mode, vae_params, vae_config, latent_scale)
    is_meanflow = isinstance(objective, meanflow.MeanFlow)
    if is_meanflow and draws is None:  # MeanFlow's draws {'t', 'r', 'noise', 'drop'}; its loss_fn below
        draws = meanflow.draw(objective, t_key, noise_key, drop_key, x0.shape)
    if draws is None:  # label dropout is then drawn inside the model, from drop_key
        t = draw_time(objective, t_key, x0.shape[0])
        noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
        force_drop = None
    else:
        t, noise, force_drop = draws["t"], draws["noise"].astype(jnp.float32), draws["drop"]

    def loss_fn(params):
        def model_fn(x_t, t_model):
            return model.apply({"params": params}, x_t, t_model, y, train=True, force_drop=force_drop,
                               rngs={"dropout": drop_key})
        terms = objective_terms(objective, model_fn, x0, t, noise)
        return jnp.mean(terms["loss"]), terms
    if is_meanflow:
        loss_fn = _meanflow_loss_fn(objective, model, x0, y, draws)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, loss, terms, tx, ema_decay, phema_exps)


def _apply_update(state: TrainState, grads, loss, terms: dict, tx, ema_decay: float, phema_exps=()):
    """AdamW (with its clipping) and the EMA; the step's metrics."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The reference's formula by hand: optax.incremental_update computes the same average but rounds
    # differently (not bit-identical on CPU, even after a single step).
    ema = jax.tree.map(lambda e, p: e * ema_decay + p.astype(e.dtype) * (1 - ema_decay), state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    for k in ("mse", "vb", "denoise_loss", "proj_loss", "v_loss"):
        if k in terms:
            metrics[k] = jnp.mean(terms[k])
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                              phema=phema.update(state.phema, params, state.step, phema_exps))
    return new_state, metrics


def _repa_update(state: TrainState, batch: dict, frozen: dict, *, model: DiT, tx, ema_decay: float,
                 input_mode: str, vae_config: Any, latent_scale: float, repa: Any, phema_exps=()):
    """REPA's train.py update (train/repa.py): draws in REPA's time convention, encoder features of the
    batch's image, the denoising + projection loss, then the same AdamW/EMA update."""
    from dit_jax.train import repa as repa_lib
    from dit_jax.transport.repa import draw_time as repa_time
    y, draws = batch["label"], batch.get("draws")
    t_key, noise_key, drop_key, latent_key = step_keys(state.rng, state.step)
    x0 = model_input(batch, latent_key, input_mode, frozen.get("vae"), vae_config, latent_scale)
    if draws is None:
        t = repa_time(t_key, x0.shape[0], repa.weighting, repa.path)
        noise, force_drop = jax.random.normal(noise_key, x0.shape, jnp.float32), None
    else:
        t, noise, force_drop = draws["t"], draws["noise"].astype(jnp.float32), draws["drop"]
    if draws is not None and "zs" in draws:
        zs = [jnp.asarray(z, jnp.float32) for z in draws["zs"]]
    else:
        zs = repa_lib.encoder_features(repa, frozen["encoders"], batch["image"])
    loss_fn = partial(repa_lib.loss_fn, model=model, spec=repa, x0=x0, y=y, t=t, noise=noise, zs=zs,
                      force_drop=force_drop, drop_key=drop_key)
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _apply_update(state, grads, loss, terms, tx, ema_decay, phema_exps)
