"""A run's parts, built once from its config and passed down: the config, the model, the objective, the
VAE and the mesh. The train step and the samplers are compiled from a `Run` (`train/programs.py`,
`sampling/run_sampler.py build_sampler`), so training, `dit-jax compile`, `dit-jax benchmark`, `sample`,
grids and evaluations all run the programs the same config describes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from dit_jax.diffusion.gaussian import GaussianDiffusion, create_diffusion
from dit_jax.transport.transport import Transport
from dit_jax.models.dit import DiTConfig
from dit_jax.parallel.mesh import make_mesh_from_config
from dit_jax.configs.base import base_config, to_dit_config


@dataclasses.dataclass(frozen=True)
class VAE:
    """The latent autoencoder of a latent run: its weights and configuration."""
    params: Any
    config: Any  # dit_jax.models.vae.VAEConfig


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    config: ml_collections.ConfigDict
    model: DiTConfig
    objective: Any  # GaussianDiffusion | Transport | RepaFlow | MeanFlow: the run's whole (unrespaced) diffusion, ...
    vae: VAE | None                  # None: a pixel run, or a latent run without a VAE (latent datasets)
    mesh: Mesh
    # REPA (train/repa.py, added by train.repa.attach): its spec and the frozen encoders' params (None: off)
    repa: Any = None
    encoder_params: Any = None

    @property
    def input_mode(self) -> str:
        """How a batch becomes x0: "" pixels, "encode" (VAE inside the step), "dataset" (stored latents)."""
        return self.config.data.latents

    @property
    def latent(self) -> bool:
        return bool(self.config.data.latents)

    @property
    def decoder(self) -> VAE | None:
        """The VAE that turns samples into images: only latent runs decode."""
        return self.vae if self.latent else None


    def with_mesh(self, mesh: Mesh) -> "Run":
        return dataclasses.replace(self, mesh=mesh)


def objective_of(config) -> GaussianDiffusion | Transport:
    """The one way to build a run's objective: config.objective "ddpm" (config.diffusion) or "sit"
    (config.transport; eps -1 takes SiT's default); "meanflow" (config.meanflow); with config.repa on, REPA's
    own flow (t = 0 data), which its samplers (sampling/run_sampler.py "repa-*") take."""
    if config.get("objective", "ddpm") == "meanflow":
        from dit_jax.meanflow.objective import from_config
        return from_config(config.meanflow)
    if config.get("objective") == "repa" or (config.get("repa") and config.repa.encoder):
        from dit_jax.transport.repa import RepaFlow
        return RepaFlow(config.repa.path)
    if config.get("objective", "ddpm") == "sit":
        t = config.transport
        return Transport(path=t.path, prediction=t.prediction, loss_weight=t.loss_weight or None,
                         train_eps=None if t.train_eps < 0 else t.train_eps,
                         sample_eps=None if t.sample_eps < 0 else t.sample_eps,
                         use_lognorm=t.get("use_lognorm", False), use_cosine_loss=t.get("use_cosine_loss", False))
    return diffusion_of(config)


def diffusion_of(config, steps: str = "") -> GaussianDiffusion:
    """The one way to build a run's diffusion: config.diffusion's schedule and length, respaced by `steps`."""
    return create_diffusion(str(steps), learn_sigma=config.model.learn_sigma,
                            noise_schedule=config.diffusion.noise_schedule,
                            diffusion_steps=config.diffusion.num_timesteps)


def load_vae(config, model: DiTConfig) -> VAE | None:
    """data.vae loaded and checked against the model's latent shape; None without one."""
    from dit_jax.weights import load_run_vae
    loaded = load_run_vae(config, model)
    return VAE(*loaded) if loaded else None


def make_run(config, devices=None, *, vae: VAE | None | str = "load", mesh: Mesh | None = None) -> Run:
    """The run of `config` on `devices` (default: all). vae: "load" reads data.vae; pass a VAE (or None)
    to use one already loaded, or abstract weights for compiling without files. REPA's spec and frozen
    encoders are added by the programs that train (dit_jax.train.repa.attach): sampling needs neither."""
    model = to_dit_config(config.model)
    return Run(config=config, model=model, objective=objective_of(config),
               vae=load_vae(config, model) if isinstance(vae, str) else vae,
               mesh=mesh if mesh is not None else make_mesh_from_config(config.mesh, devices))


def config_for_model(model: DiTConfig, *, noise_schedule: str = "linear", num_timesteps: int = 1000,
                     vae: str = "") -> ml_collections.ConfigDict:
    """A run config around weights that came without one (converted weights, a random model): the
    reference's diffusion unless told otherwise, latents when the model takes 4 channels and a VAE is given."""
    config = base_config()
    config.model.update({k: v for k, v in model.to_dict().items() if k in config.model})
    config.diffusion.noise_schedule, config.diffusion.num_timesteps = noise_schedule, num_timesteps
    if vae:
        config.data.latents, config.data.vae = "dataset", vae
    else:
        config.data.latents = "" if model.in_channels in (1, 3) else "dataset"
    return config


def abstract_vae(mesh: Mesh) -> VAE:
    """The SD VAE's shapes, replicated over `mesh`: compiles a step that encodes without any weights file."""
    from dit_jax.models.vae import VAEConfig, abstract_params
    from dit_jax.parallel.sharding import replicated
    vae_config = VAEConfig()
    return VAE(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated(mesh)),
                            abstract_params(vae_config)), vae_config)
