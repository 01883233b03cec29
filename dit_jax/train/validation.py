"""Every field of a training config checked before any work, so a bad value fails in seconds with a
message that says what to change, not after compiling and training (or while saving a checkpoint).

Files the config names (VAE, weights to start from, reference batch, the dataset) are checked too,
as far as that is cheap: the dataset's first and last records are read.
"""

from __future__ import annotations

from dit_jax import storage
from dit_jax.diffusion.gaussian import BETA_SCHEDULES
from dit_jax.diffusion.respace import space_timesteps
from dit_jax.sampling.run_sampler import SamplerSettings
from dit_jax.parallel.mesh import MESH_AXES
from dit_jax.train import evaluators as evaluation
from dit_jax.configs.base import to_dit_config
from dit_jax.run import objective_of
from dit_jax.train.step import INPUT_MODES


OBJECTIVES = ("ddpm", "sit", "meanflow")


def validate(config) -> int:
    """Raise ValueError naming every bad field of `config` (all of them at once), then check the dataset.
    Returns the number of records in the training split."""
    raise_problems(config_problems(config))
    from dit_jax.data.source_check import check_dataset
    count = check_dataset(config.data.name, config.data.data_dir, config.data.split)
    from dit_jax.train import repa
    repa.check_dataset(config)
    return count


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ValueError("bad config: " + "; ".join(problems))


def config_problems(config, files: bool = True) -> list[str]:
    """What is wrong with `config` (empty when nothing is); reads nothing but the files it names, and
    not those when `files` is False (a launch machine that does not hold the hosts' disks)."""
    problems = []
    try:
        model = to_dit_config(config.model)
    except (ValueError, TypeError) as e:
        return [f"model: {e}"]
    problems += _data(config.data, model, files)
    problems += _training(config)
    problems += _optim(config.optim)
    problems += _mesh(config.mesh)
    problems += _diffusion(config)
    problems += _objective(config)
    problems += _sampling(config)
    problems += evaluation.check(config, files)
    from dit_jax.train import repa
    problems += repa.problems(config, model, files)
    if files and config.get("init_weights", ""):
        from dit_jax.weights import weights_dir_problem
        problem = weights_dir_problem(config.init_weights)
        if problem:
            problems.append(f"init_weights: {problem}")
    return problems


def _at_least(config, keys, low: int) -> list[str]:
    return [f"{key} must be an integer >= {low}, got {config[key]!r}" for key in keys
            if not isinstance(config[key], int) or config[key] < low]


def _data(d, model, files: bool) -> list[str]:
    problems = []
    if not d.name:
        problems.append("data.name is empty: name a TFDS dataset (e.g. 'digits', or one from `dit-jax build-dataset`)")
    if d.latents not in INPUT_MODES:
        problems.append(f"data.latents must be one of {INPUT_MODES}, got {d.latents!r}")
    elif not d.latents:
        if d.image_size != model.input_size:
            problems.append(f"data.image_size {d.image_size} != model.input_size {model.input_size} (pixel training)")
        if d.channels != model.in_channels:
            problems.append(f"data.channels {d.channels} != model.in_channels {model.in_channels}")
    else:
        if d.latents == "encode" and not d.vae:
            problems.append("data.latents='encode' needs the VAE: set --config.data.vae=DIR (a `dit-jax convert "
                            "--from-diffusers-vae` output), or train on a latent dataset with data.latents='dataset'")
        if files and d.vae and not storage.resolve(d.vae).is_dir():
            problems.append(f"data.vae {d.vae!r} is not a directory (convert the VAE with "
                            "`dit-jax convert --from-diffusers-vae PATH --out DIR`)")
        if not d.latent_scale > 0:
            problems.append(f"data.latent_scale must be > 0, got {d.latent_scale}")
    if d.channels not in (1, 3):
        problems.append(f"data.channels must be 1 or 3 (images are read as grey or RGB), got {d.channels}")
    if d.num_classes != model.num_classes:
        problems.append(f"data.num_classes {d.num_classes} != model.num_classes {model.num_classes}")
    problems += [f"data.{p}" for p in _at_least(d, ("image_size", "worker_buffer_size"), 1)]
    problems += [f"data.{p}" for p in _at_least(d, ("worker_count", "prefetch_to_device"), 0)]
    return problems


def _training(config) -> list[str]:
    problems = _at_least(config, ("batch_size", "total_steps", "log_every", "checkpoint_every"), 1)
    # 0 would make Orbax keep nothing: every checkpoint deleted as soon as it is written.
    problems += [p + " (the number of checkpoints kept; 0 would keep none)"
                 for p in _at_least(config, ("keep_checkpoints",), 1)]
    problems += _at_least(config, ("seed",), 0)
    if not 0 <= config.ema_decay < 1:
        problems.append(f"ema_decay must be in [0, 1), got {config.ema_decay}")
    if config.checkpoint_every_minutes < 0:
        problems.append(f"checkpoint_every_minutes must be >= 0 (0: off), got {config.checkpoint_every_minutes}")
    from dit_jax.train import profile
    problems += profile.check(config)
    from dit_jax.train import phema
    problems += phema.config_problems(config)
    if config.get("peak_tflops_per_device", 0.0) < 0:
        problems.append(f"peak_tflops_per_device must be >= 0 (0: from the device kind), "
                        f"got {config.peak_tflops_per_device}")
    return problems


def _optim(o) -> list[str]:
    problems = []
    if not o.lr > 0:
        problems.append(f"optim.lr must be > 0, got {o.lr}")
    for key in ("b1", "b2"):
        if not 0 <= o[key] < 1:
            problems.append(f"optim.{key} must be in [0, 1), got {o[key]}")
    if not o.eps > 0:
        problems.append(f"optim.eps must be > 0, got {o.eps}")
    for key in ("weight_decay", "grad_clip"):
        if not o[key] >= 0:
            problems.append(f"optim.{key} must be >= 0 (0: off), got {o[key]}")
    problems += [f"optim.{p}" for p in _at_least(o, ("warmup_steps",), 0)]
    return problems


def _mesh(mesh) -> list[str]:
    sizes = {axis: mesh[axis] for axis in MESH_AXES}
    bad = {axis: size for axis, size in sizes.items() if not isinstance(size, int) or (size < 1 and size != -1)}
    if bad:
        return [f"mesh sizes must be >= 1, or -1 for all remaining devices; got {bad} "
                "(e.g. --config.mesh.data=-1)"]
    if list(sizes.values()).count(-1) > 1:
        return [f"at most one of mesh.data/fsdp/tensor may be -1, got {sizes}"]
    dcn = {axis: mesh[axis] for axis in ("dcn_data", "dcn_fsdp") if axis in mesh}
    bad = {axis: size for axis, size in dcn.items() if not isinstance(size, int) or size < 1}
    if bad:
        return [f"mesh.dcn_* sizes (the slices an axis spans) must be >= 1, got {bad}"]
    return []


def _diffusion(config) -> list[str]:
    d = config.diffusion
    problems = []
    if d.noise_schedule not in BETA_SCHEDULES:
        problems.append(f"diffusion.noise_schedule must be one of {sorted(BETA_SCHEDULES)}, got {d.noise_schedule!r}")
    if not isinstance(d.num_timesteps, int) or d.num_timesteps < 2:
        problems.append(f"diffusion.num_timesteps must be an integer >= 2, got {d.num_timesteps!r}")
    return problems


def respacing_problem(spec, num_timesteps: int) -> str | None:
    """Why the respacing `spec` ('250', 'ddim50', '10,15,20') cannot be built, or None: the kept timesteps
    are computed (cheap) exactly as sampling will."""
    try:
        steps = space_timesteps(num_timesteps, str(spec) or str(num_timesteps))
    except (ValueError, TypeError) as e:
        return str(e)
    if len(steps) < 2:
        return f"{spec!r} keeps {len(steps)} step; sampling needs at least 2"
    return None


def _objective(config) -> list[str]:
    if config.objective not in OBJECTIVES:
        return [f"objective must be one of {OBJECTIVES}, got {config.objective!r}"]
    if config.objective == "sit":
        try:
            objective_of(config)
        except ValueError as e:
            return [f"transport: {e}"]
    if config.objective == "meanflow":
        from dit_jax.meanflow.checks import config_problems
        return config_problems(config)
    return []


def _sampling(config) -> list[str]:
    """config.sample and the sampling settings of every evaluator (the rest of config.evals: evaluation.check)."""
    s = config.sample
    problems = [f"sample.{p}" for p in _at_least(s, ("every",), 0)]
    if s.every:
        problems += [f"sample.{p}" for p in _at_least(s, ("num",), 1)]
    if _objective(config) or _diffusion(config):
        return problems  # the objective itself is wrong: said once, above
    objective = objective_of(config)
    checks = ([("sample", s)] if s.every else []) + [(f"evals.{n}", e) for n, e in evaluation.active(config)]
    for name, section in checks:
        settings = SamplerSettings.from_config(section, config.transport)
        found = settings.problems(objective)
        problems += [f"{name}.{p}" for p in found]
        if not found and settings.resolved(objective) in ("ddpm", "ddim") and not settings.spacing:
            problem = respacing_problem(section.steps, objective.num_timesteps)
            if problem:
                problems.append(f"{name}.steps: {problem}")
        if not section.cfg_scale >= 0:
            problems.append(f"{name}.cfg_scale must be >= 0 (guidance applies only above 1), got {section.cfg_scale}")
    return problems
