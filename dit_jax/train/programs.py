"""The one place the training run's compiled programs are built: the sharded, state-donating train
step and the jitted state initialisation. The training loop, `dit-jax compile`, `dit-jax benchmark`
and the parity tool all call `build_train_step`, so what they compile, time and compare is the step
that training runs.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from dit_jax.models.dit import DiT
from dit_jax.parallel.sharding import batch_divisor, batch_sharding, replicated, state_shardings
from dit_jax.run import Run
from dit_jax.train import phema
from dit_jax.train.state import TrainState, abstract_state, create_state, make_optimizer
from dit_jax.train.step import train_step


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    step: Callable                   # jitted fn(state, batch, vae_params) -> (state, metrics); state donated
    init: Callable                   # jitted fn(init_params or None) -> a fresh state in its shardings
    abstract_state: TrainState       # ShapeDtypeStructs carrying the state's shardings (restore target)
    state_shardings: TrainState
    batch_sharding: NamedSharding
    tx: optax.GradientTransformation
    notes: tuple[str, ...]           # sharding decisions worth a log line

    def lower(self, run: Run):
        """The step lowered for the run's abstract arguments (what compile checks and tests compare)."""
        return self.step.lower(self.abstract_state, abstract_batch(run), vae_argument(run))


def check_batch(config, mesh) -> None:
    div = batch_divisor(mesh)
    if config.batch_size % div:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {div} devices that split the batch "
                         f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple of {div}")
    if config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} hosts")


def build_train_step(run: Run) -> TrainProgram:
    """The run's train step: hybrid loss (or the run's objective), AdamW, EMA; the state sharded as
    config.mesh says (FSDP, ZeRO-1), the batch split over data x fsdp, the state donated."""
    config, mesh = run.config, run.mesh
    tx = make_optimizer(config.optim)
    stds = tuple(config.phema.stds) if "phema" in config else ()
    boxed = abstract_state(run.model, tx, config.seed, run.repa, len(stds))
    shardings, notes = state_shardings(boxed, mesh, config.mesh)
    placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings)
    encoder = run.vae.config if run.input_mode == "encode" and run.vae is not None else None
    step = jax.jit(partial(train_step, model=DiT(run.model), objective=run.objective, tx=tx,
                           ema_decay=config.ema_decay, input_mode=run.input_mode, vae_config=encoder,
                           latent_scale=config.data.latent_scale, repa=run.repa,
                           phema_exps=tuple(float(e) for e in phema.std_to_exp(stds))),
                   in_shardings=(shardings, batch_sharding(mesh), frozen_shardings(run)),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
    with jax.set_mesh(mesh):
        init = jax.jit(lambda p: nn.unbox(create_state(run.model, tx, config.seed, p, run.repa, len(stds))),
                       out_shardings=shardings)
    return TrainProgram(step=step, init=init, abstract_state=placed, state_shardings=shardings,
                        batch_sharding=batch_sharding(mesh), tx=tx, notes=tuple(notes))


def vae_argument(run: Run, vae_params: Any = None) -> Any:
    """The step's third argument: the VAE weights when the step encodes, else None; with REPA on,
    {"vae": that, "encoders": the frozen encoders' params}. `vae_params`: the VAE's weights already on
    the devices (the run's own otherwise)."""
    vae = (vae_params if vae_params is not None else run.vae.params) if run.input_mode == "encode" and run.vae else None
    return {"vae": vae, "encoders": run.encoder_params} if run.repa is not None else vae


def frozen_shardings(run: Run) -> Any:
    """The third argument's shardings: the VAE replicated, the encoders by the model's logical rules
    (their unannotated params replicated)."""
    mesh = run.mesh
    if run.repa is None:
        return replicated(mesh)
    from dit_jax.parallel.sharding import logical_shardings
    encoders, _ = logical_shardings(run.encoder_params, mesh, allow_replicated=True)
    return {"vae": replicated(mesh), "encoders": encoders}


def abstract_batch(run: Run, batch_size: int | None = None) -> dict:
    """The global batch the input pipeline sends, as shapes: uint8 pixels (also for "encode"), or a
    latent dataset's float16 posterior mean/std as `dit-jax extract-latents` stores them."""
    config, model = run.config, run.model
    b = batch_size or config.batch_size
    sharding = batch_sharding(run.mesh)
    label = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sharding)
    if run.input_mode == "dataset":
        latent = jax.ShapeDtypeStruct((b, model.input_size, model.input_size, model.in_channels), jnp.float16,
                                      sharding=sharding)
        batch = {"mean": latent, "std": latent, "label": label}
        if run.repa is not None:  # REPA's encoders read the record's image too
            batch["image"] = jax.ShapeDtypeStruct((b, config.data.image_size, config.data.image_size,
                                                   config.data.channels), jnp.uint8, sharding=sharding)
        return batch
    size, channels = ((config.data.image_size, config.data.channels) if run.input_mode == "encode"
                      else (model.input_size, model.in_channels))
    return {"image": jax.ShapeDtypeStruct((b, size, size, channels), jnp.uint8, sharding=sharding), "label": label}
