"""`dit-jax sample`: a class-conditional PNG grid, or the ADM .npz of N samples under the reference's
evaluation protocol, from converted weights, a training run's EMA weights, or a randomly initialised
model (which shows the sampling path works before any weights exist).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time

import jax
import numpy as np

from dit_jax import storage
from dit_jax.models.dit import DiTConfig, init_params
from dit_jax.parallel.mesh import make_mesh
from dit_jax.sampling.grids import save_grid, to_uint8
from dit_jax.sampling.labels import check_labels
from dit_jax.sampling.npz import sample_npz
from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler, fetch
from dit_jax.run import VAE, Run, config_for_model, make_run
from dit_jax.weights import load_vae_weights, load_weights


def sampling_run(config: DiTConfig, schedule: dict | None, vae: str | None) -> Run:
    """The run the weights come from, as far as sampling needs it: the model, its objective (a training
    run's diffusion schedule or SiT transport, else the reference's diffusion, or SiT's with
    schedule["objective"] = "sit"), the VAE that decodes its latents, every device's batch split."""
    schedule = schedule or {}
    c = config_for_model(config, noise_schedule=schedule.get("noise_schedule", "linear"),
                         num_timesteps=schedule.get("diffusion_steps", 1000), vae=vae or "")
    # Weights that do not say: a MeanFlow network (second time input) was trained with MeanFlow.
    c.objective = schedule.get("objective") or ("meanflow" if config.second_time_input else "ddpm")
    c.transport.update(schedule.get("transport", {}))
    c.repa.path = schedule.get("repa_path", "linear")   # objective "repa": REPA's samplers on its path
    return make_run(c, vae=VAE(*load_vae_weights(vae)) if vae else None, mesh=make_mesh(devices=jax.devices()))


# Samplers built by this process's `sample` calls, by everything their programs depend on (the weights are
# arguments): a repeated command in one process (a notebook, a sweep of runs of one model) traces and
# compiles its sampler once. A few only: each holds its compiled programs.
_SAMPLERS: dict = {}
_KEEP_SAMPLERS = 8


def cached_sampler(run: Run, schedule: dict | None, settings: SamplerSettings, *, uint8: bool = False,
                   finite_check: bool = False, guide: DiTConfig | None = None):
    """`build_sampler(run, settings, ...)` for a run made by `sampling_run`, built once per process for
    equal inputs: the model, the objective's `schedule`, the VAE's config (its params are an argument),
    the settings, the devices."""
    vae_config = run.decoder.config if run.decoder is not None else None
    key = (run.model, json.dumps(schedule or {}, sort_keys=True), vae_config, settings, uint8, finite_check, guide,
           tuple(run.mesh.devices.flat), run.mesh.axis_names)
    if key not in _SAMPLERS:
        while len(_SAMPLERS) >= _KEEP_SAMPLERS:
            _SAMPLERS.pop(next(iter(_SAMPLERS)))  # the oldest
        _SAMPLERS[key] = build_sampler(run, settings, uint8=uint8, finite_check=finite_check, guide=guide)
    return _SAMPLERS[key]


def load_model(weights: str | None, workdir: str | None, config: DiTConfig | None, seed: int):
    """(params, config, what they are (for the log and the .npz manifest), schedule): a run's EMA weights
    at its latest step (`workdir`), converted `weights` (checked against `config` when given), or with
    neither a model of `config` initialised from `seed`. `schedule`: create_diffusion's noise_schedule and
    diffusion_steps of the run; empty (the reference's linear 1000 steps) for weights."""
    if workdir:
        return load_workdir(workdir)
    if weights:
        params, config = load_weights(weights, config)
        return params, config, f"weights from {weights}", {}
    return (init_params(config, jax.random.key(seed)), config,
            "a RANDOMLY INITIALISED model (no --weights given): the pictures show the sampler running, "
            "not a trained model", {})


def load_workdir(workdir: str, step: int | None = None):
    """`load_model` of a training run: its EMA weights at `step` (default: the latest checkpoint)."""
    from dit_jax.train.checkpoint import load_run
    from dit_jax.configs.base import to_dit_config
    params, run, step = load_run(workdir, step)
    schedule = dict(noise_schedule=run["diffusion"]["noise_schedule"],
                    diffusion_steps=run["diffusion"]["num_timesteps"], objective=run.get("objective", "ddpm"))
    if schedule["objective"] == "sit":
        schedule["transport"] = run["transport"]
    if run.get("repa", {}).get("encoder"):   # a REPA run samples with REPA's samplers
        schedule.update(objective="repa", repa_path=run["repa"]["path"])
    return params, to_dit_config(run["model"]), f"the EMA weights of {workdir} at step {step}", schedule


def load_guide(spec: str, config: DiTConfig, schedule: dict):
    """(params, config, what it is) of the autoguidance model `spec`: a weights directory, or a training
    run's EMA weights at its latest checkpoint or at WORKDIR:STEP; checked to be of the main model's kind."""
    from dit_jax.exit_codes import BadInput
    from dit_jax.sampling.autoguidance import check_guide
    from dit_jax.weights import training_run_of
    path, step = spec, None
    if not os.path.exists(spec) and ":" in spec and spec.rsplit(":", 1)[1].isdigit():
        path, step = spec.rsplit(":", 1)[0], int(spec.rsplit(":", 1)[1])
    if not os.path.isdir(path):
        raise BadInput(f"--guide {spec}: no such directory (a weights directory, a training run, or RUN:STEP)")
    if training_run_of(path) is not None:
        from dit_jax.train.checkpoint import available_steps
        steps = available_steps(path)
        if step is not None and step not in steps:
            raise BadInput(f"--guide {spec}: the run has no checkpoint of step {step}; it has steps {steps}")
        params, guide, source, guide_schedule = load_workdir(path, step)
    else:
        if step is not None:
            raise BadInput(f"--guide {spec}: :STEP picks a checkpoint of a training run; {path} is not one")
        params, guide = load_weights(path)
        source, guide_schedule = f"weights from {path}", None
    check_guide(config, guide, schedule, guide_schedule, spec)
    return params, guide, source


def grid_labels(classes: list[int] | None, num: int, num_classes: int, seed: int) -> list[int]:
    """The grid's `num` labels: `classes` repeated to fill it, else uniform random from `seed`; checked
    against the model's classes (an out-of-range label would silently index past its embedding table)."""
    if classes:
        labels = (classes * num)[:num]
    else:
        labels = [int(c) for c in np.random.default_rng(seed).integers(0, num_classes, num)]
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} out of range: the model has classes 0..{num_classes - 1}")
    return labels


def write_grid(params, config: DiTConfig, source: str, out: str, settings: SamplerSettings, *, num: int = 16,
               classes: list[int] | None = None, seed: int = 0, vae: str | None = None, nrow: int | None = None,
               upscale: int = 4, schedule: dict | None = None, guide=None) -> str:
    """`num` samples as a PNG grid at `out`; returns the path written. Latent models are decoded with the
    VAE weights in `vae`; without them their latents go to OUT.npz instead, as no image can be drawn.
    `schedule` and `guide` as in `write_npz`."""
    print(f"sampling {num} images from {source}", flush=True)
    labels = grid_labels(classes, num, config.num_classes, seed)
    run = sampling_run(config, schedule, vae)
    sample = cached_sampler(run, schedule, settings, finite_check=True, guide=guide[1] if guide else None)
    t0 = time.time()
    samples = fetch(sample(params, np.asarray(labels), jax.random.PRNGKey(seed), run.vae.params if run.vae else None,
                           guide_params=guide[0] if guide else None), num)
    dt = time.time() - t0
    print(f"{num} samples, {settings.describe()}: {dt:.1f} s including compilation ({num / dt:.2f} img/s)")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if vae:  # decoded by the sampler
        save_grid(to_uint8(samples), out, nrow=nrow, upscale=upscale)
        print(f"wrote {out} (decoded with the VAE in {vae}; classes {labels})")
        return out
    if config.in_channels in (1, 3):
        save_grid(to_uint8(samples), out, nrow=nrow, upscale=upscale)
        print(f"wrote {out} (classes {labels})")
        return out
    path = os.path.splitext(out)[0] + ".npz"
    buf = io.BytesIO()  # written whole or not at all
    np.savez(buf, latents=np.asarray(samples), labels=np.asarray(labels))
    storage.write_bytes_atomic(path, buf.getvalue())
    print(f"wrote latents to {path}: to decode {config.in_channels}-channel latents to images, pass --vae DIR "
          "(converted with `dit-jax convert --from-diffusers-vae`)")
    return path


def write_npz(params, config: DiTConfig, source: str, out: str, num_samples: int, settings: SamplerSettings, *,
              seed: int = 0, vae: str | None = None, batch_per_device: int = 32, schedule: dict | None = None,
              labels: str = "random", guide=None) -> str:
    """`num_samples` images into the ADM .npz at `out` (`sample_npz`: every device of every host,
    resumable shards). The defaults are the reference's evaluation protocol: 250 DDPM steps, cfg 1.5
    (3 channels, only if > 1), uniform random labels, VAE decode, uint8 as the reference. `schedule`:
    create_diffusion's noise_schedule / diffusion_steps (a run's, from `load_model`); none: linear 1000.
    labels: "random" (the reference's) or "balanced" (num_samples / num_classes of each class).
    guide: (params, config, what it is) of an autoguidance model (`load_guide`), or None."""
    check_labels(labels, num_samples, config.num_classes)
    if config.in_channels not in (1, 3) and not vae:
        raise ValueError(f"the ADM .npz holds images: decoding {config.in_channels}-channel latents needs --vae DIR")
    print(f"sampling {num_samples} images from {source}: {settings.describe()}, seed {seed}", flush=True)
    sample_run = sampling_run(config, schedule, vae)
    run = cached_sampler(sample_run, schedule, settings, uint8=True, finite_check=True, guide=guide[1] if guide else None)
    vae_weights = (sample_run.vae.params, sample_run.vae.config) if sample_run.vae else None
    # What made the images, recorded in the shards' manifest: a rerun with other settings starts over.
    made_by = dict(weights=source, vae=vae, **_manifest_settings(settings, sample_run.objective), **(schedule or {}))
    if guide:
        made_by.update(guide=guide[2])
    return sample_npz(run, params, num_samples, config.num_classes, seed, out, batch_per_device, vae_weights,
                      made_by, labels=labels, guide_params=guide[0] if guide else None)


def _manifest_settings(settings: SamplerSettings, objective) -> dict:
    """The sampler and every setting it uses (the objective's default sampler named), for the shard manifest."""
    fields = dataclasses.asdict(settings)
    fields["sampler"] = settings.resolved(objective)
    fields["cfg_interval"] = list(settings.cfg_interval) if settings.cfg_interval else None
    return fields


def sample(out: str, *, weights: str | None = None, workdir: str | None = None, config: DiTConfig | None = None,
           vae: str | None = None, num: int = 16, classes: list[int] | None = None, num_samples: int = 0,
           settings: SamplerSettings | None = None, objective: str | None = None, seed: int = 0,
           batch_per_device: int = 32, nrow: int | None = None, upscale: int = 4, labels: str = "random",
           guide: str | None = None) -> str:
    """Load the model (`load_model`), then sample a grid of `num` images (`write_grid`), or with
    `num_samples` the ADM .npz (`write_npz`); returns the path written. Steps and guidance left unset
    (None in `settings`) take the defaults of each: a quick look for a grid (50 steps, cfg 4), the
    evaluation protocol for an .npz (250 steps, cfg 1.5). objective: "ddpm" or "sit" for weights that
    do not say (converted weights, a random model); a run's own objective otherwise."""
    params, config, source, schedule = load_model(weights, workdir, config, seed)
    if objective and not workdir:
        schedule = dict(schedule, objective=objective)
    elif objective and objective != schedule.get("objective", "ddpm"):
        raise ValueError(f"--objective {objective}: the run in {workdir} was trained with objective "
                         f"{schedule.get('objective', 'ddpm')!r}; drop --objective")
    settings = settings or SamplerSettings(steps=None, cfg_scale=None)
    defaults = dict(steps="250", cfg_scale=1.5) if num_samples else dict(steps="50", cfg_scale=4.0)
    if config.second_time_input:  # MeanFlow: one network evaluation (its paper's protocol); cfg is trained in
        defaults["steps"] = "1"
    settings = dataclasses.replace(settings, **{k: v for k, v in defaults.items() if getattr(settings, k) is None})
    guided = None
    if guide:  # autoguidance: a second model of the same kind (`load_guide`)
        guided = load_guide(guide, config, schedule)
        print(f"autoguidance by {guided[2]} at scale {settings.cfg_scale}", flush=True)
    if num_samples:
        return write_npz(params, config, source, out, num_samples, settings, seed=seed, vae=vae,
                         batch_per_device=batch_per_device, schedule=schedule, labels=labels, guide=guided)
    return write_grid(params, config, source, out, settings, num=num, classes=classes, seed=seed, vae=vae,
                      nrow=nrow, upscale=upscale, schedule=schedule, guide=guided)
