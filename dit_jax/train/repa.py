"""REPA (Representation Alignment, Yu et al.) switched on by config.repa: its spec, its checks, its
projector params and its loss inside the train step.

    --config.repa.encoder=dinov2-vit-b --config.repa.weights=PATH.pth     # REPA's SiT-XL/2 recipe
    --config.repa.encoder=digits-mlp                                        # the digits demo

The denoising term is REPA's SILoss (dit_jax.transport.repa: t = 0 is data) in place of config.objective's;
the projection term aligns the tokens after block `encoder_depth`, through the projector MLPs (params
under models.repa.PROJECTORS, trained and EMA'd with the model), with each frozen encoder's features of
the same (cropped, flipped) image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dit_jax.exit_codes import BadInput
from dit_jax.models.dit import DiT, DiTConfig
from dit_jax.models.repa import PROJECTORS, Projectors
from dit_jax.train import repa_encoders
from dit_jax.transport import repa as objective
from dit_jax.transport.guidance import split_learned_sigma


@dataclasses.dataclass(frozen=True)
class RepaSpec:
    """Everything about REPA that the compiled step depends on (hashable: a static argument)."""
    encoders: tuple[str, ...]
    z_dims: tuple[int, ...]
    encoder_depth: int
    proj_coeff: float
    projector_dim: int
    path: str
    prediction: str
    weighting: str
    resolution: int           # the raw image's side (data.image_size)


def enabled(config) -> bool:
    return bool(config.get("repa") and config.repa.encoder)


def names(config) -> tuple[str, ...]:
    return tuple(n.strip() for n in config.repa.encoder.split(",") if n.strip())


def problems(config, model: DiTConfig, files: bool = False, need_weights: bool = True) -> list[str]:
    """What is wrong with config.repa for this model and data (empty when REPA is off or fine); with `files`,
    the encoders' weight files must exist; without `need_weights`, no weight file need be named (a step compiled
    or timed with abstract or random encoders reads none)."""
    if not enabled(config):
        return []
    r, out = config.repa, []
    for name in names(config):
        if name not in repa_encoders.ENCODERS:
            out.append(f"repa.encoder: unknown encoder {name!r}; known: {', '.join(repa_encoders.ENCODERS)}")
            continue
        enc = repa_encoders.ENCODERS[name]
        res = int(config.data.image_size)
        why = enc.problem(res)
        if why:
            out.append(f"repa.encoder {name}: {why}")
            continue
        grid, model_grid = enc.grid(res), model.input_size // model.patch_size
        if grid and grid != model_grid:
            out.append(f"repa.encoder {name}: at data.image_size {res} it gives {grid}x{grid} tokens but the model "
                       f"has {model_grid}x{model_grid}; REPA aligns token by token (use 256 or 512 px with patch 2)")
    if not 1 <= r.encoder_depth <= model.depth:
        out.append(f"repa.encoder_depth {r.encoder_depth} must be in [1, model.depth = {model.depth}]")
    for field, allowed in (("path", objective.PATHS), ("weighting", objective.WEIGHTINGS),
                           ("prediction", objective.PREDICTIONS)):
        if r[field] not in allowed:
            out.append(f"repa.{field} must be one of {allowed}, got {r[field]!r}")
    weights = [w.strip() for w in r.weights.split(",")] if r.weights else [""] * len(names(config))
    if len(weights) != len(names(config)):
        out.append(f"repa.weights: {len(weights)} paths for {len(names(config))} encoders (one each, comma-separated)")
    else:
        for name, path in zip(names(config), weights):
            enc = repa_encoders.ENCODERS.get(name)
            if enc is not None and enc.needs_weights and not path and need_weights:
                out.append(f"repa.weights: {name} needs the official DINOv2 checkpoint (.pth), e.g. "
                           f"--config.repa.weights=weights/dinov2_vit{name.split('-')[2]}14"
                           f"{'_reg4' if name.endswith('-reg') else ''}_pretrain.pth")
            elif files and path:
                from dit_jax import storage
                if not storage.exists(path):
                    out.append(f"repa.weights: no file at {path!r} (the {name} checkpoint)")
    if r.projector_dim < 1:
        out.append(f"repa.projector_dim must be >= 1, got {r.projector_dim}")
    return out


def spec_of(config, model: DiTConfig, need_weights: bool = True) -> RepaSpec | None:
    """The run's REPA spec (None when off); BadInput on a bad config.repa (`need_weights`: as in `problems`)."""
    if not enabled(config):
        return None
    bad = problems(config, model, need_weights=need_weights)
    if bad:
        raise BadInput("bad config: " + "; ".join(bad))
    r, encs = config.repa, names(config)
    return RepaSpec(encoders=encs, z_dims=tuple(repa_encoders.ENCODERS[n].z_dim for n in encs),
                    encoder_depth=int(r.encoder_depth), proj_coeff=float(r.proj_coeff),
                    projector_dim=int(r.projector_dim), path=r.path, prediction=r.prediction,
                    weighting=r.weighting, resolution=int(config.data.image_size))


def load_encoders(config, spec: RepaSpec) -> tuple:
    weights = config.repa.weights.split(",") if config.repa.weights else [""] * len(spec.encoders)
    return tuple(repa_encoders.load(n, w, spec.resolution) for n, w in zip(spec.encoders, weights))


def abstract_encoders(spec: RepaSpec) -> tuple:
    return tuple(repa_encoders.abstract(n, spec.resolution) for n in spec.encoders)


def random_encoders(spec: RepaSpec, seed: int = 0) -> tuple:
    return tuple(repa_encoders.random(n, spec.resolution, jax.random.key(seed + i)) for i, n in enumerate(spec.encoders))


def attach(run, encoders: str = "load"):
    """`run` with REPA's spec and frozen encoders when config.repa is on (unchanged otherwise). encoders:
    "load" reads config.repa.weights, "random" initialises them, "abstract" gives shapes only."""
    spec = spec_of(run.config, run.model, need_weights=encoders == "load")
    if spec is None:
        return run
    return dataclasses.replace(run, repa=spec, encoder_params=encoders_for(run.config, spec, encoders))


def encoders_for(config, spec: RepaSpec | None, how: str):
    """The frozen encoders' params: "load" (config.repa.weights), "random" or "abstract" (shapes only)."""
    if spec is None:
        return None
    if how not in ("load", "random", "abstract"):
        raise ValueError(f"encoders must be 'load', 'random' or 'abstract', got {how!r}")
    return {"load": load_encoders, "random": lambda c, s: random_encoders(s, int(c.seed)),
            "abstract": lambda c, s: abstract_encoders(s)}[how](config, spec)


def projectors(spec: RepaSpec, model: DiTConfig) -> Projectors:
    from dit_jax.models.dit import DTYPES
    return Projectors(spec.projector_dim, spec.z_dims, dtype=DTYPES[model.dtype], param_dtype=DTYPES[model.param_dtype])


def init_projectors(spec: RepaSpec, model: DiTConfig, key: jax.Array) -> Any:
    """Boxed projector params (xavier_uniform, zero biases)."""
    tokens = jnp.zeros((1, model.num_tokens, model.hidden_size), jnp.float32)
    return projectors(spec, model).init({"params": key}, tokens)["params"]


def with_projectors(params: Any, spec: RepaSpec | None, model: DiTConfig, key: jax.Array) -> Any:
    """The DiT's params plus fresh projectors (kept when `params` already has them: a converted REPA checkpoint)."""
    if spec is None or PROJECTORS in params:
        return params
    return {**params, PROJECTORS: init_projectors(spec, model, jax.random.fold_in(key, 0x5E9A))}


def encoder_features(spec: RepaSpec, encoder_params, images: jax.Array) -> list[jax.Array]:
    return [repa_encoders.features(n, p, images, spec.resolution) for n, p in zip(spec.encoders, encoder_params)]


def loss_fn(params, *, model: DiT, spec: RepaSpec, x0, y, t, noise, zs, force_drop, drop_key):
    """(total loss, terms) of REPA's update: mean denoising MSE + proj_coeff * projection loss."""
    x_t, target = objective.noisy_input_and_target(spec.path, x0, noise, t)
    dit_params = {k: v for k, v in params.items() if k != PROJECTORS}
    out, tokens = model.apply({"params": dit_params}, x_t, t, y, train=True, force_drop=force_drop,
                              capture_depth=spec.encoder_depth, rngs={"dropout": drop_key})
    out = split_learned_sigma(out, x0.shape[-1])  # a learned-sigma model regresses its first half
    zs_tilde = projectors(spec, model.config).apply({"params": params[PROJECTORS]}, tokens)
    denoise = objective.denoising_loss(out, target)
    proj = objective.projection_loss(zs, zs_tilde)
    return jnp.mean(denoise) + spec.proj_coeff * proj, {"denoise_loss": denoise, "proj_loss": proj}



def check_dataset(config) -> None:
    """REPA's encoders read the raw image of every record: a latent dataset without it cannot train REPA."""
    if not enabled(config) or config.data.latents != "dataset":
        return
    from dit_jax.data.pipeline import open_source
    record = open_source(config.data.name, config.data.data_dir, config.data.split)[0]
    if "image" not in record:
        raise BadInput(f"data.name {config.data.name!r}: a latent dataset without the images REPA's encoders read; "
                       "build one with `dit-jax extract-latents ... --with-images` (or train with "
                       "--config.data.latents=encode on the image dataset)")
