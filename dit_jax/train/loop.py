"""The one training loop: mesh -> data -> model -> shardings -> jit -> loop.

The same program runs on a laptop, an 8-device CPU mesh, or every host of a pod slice: each host
feeds its slice of the global batch, the jitted step runs on all devices, checkpoints are
written by all hosts together, and a restart with the same workdir resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial

import flax.linen as nn
import jax
import numpy as np

from dit_jax.diffusion.gaussian import create_diffusion
from dit_jax.models.dit import DiT, forward_macs
from dit_jax.parallel.sharding import LOGICAL_RULES, batch_divisor, batch_sharding, logical_shardings, make_mesh, replicated
from dit_jax.train import checkpoint as ckpt, evaluation
from dit_jax.train.preemption import Watch
from dit_jax.train.config_base import to_dit_config
from dit_jax.train.metrics_log import MetricsLog, peak_flops
from dit_jax.train.state import abstract_state, create_state, make_optimizer
from dit_jax.train.step import INPUT_MODES, train_step


class Preempted(Exception):
    pass


def validate(config) -> None:
    """Fail before any work with a message that says what to change."""
    model = to_dit_config(config.model)
    problems = []
    d = config.data
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
        if d.vae and not os.path.isdir(d.vae):
            problems.append(f"data.vae {d.vae!r} is not a directory (convert the VAE with "
                            "`dit-jax convert --from-diffusers-vae PATH --out DIR`)")
    if d.num_classes != model.num_classes:
        problems.append(f"data.num_classes {d.num_classes} != model.num_classes {model.num_classes}")
    if config.batch_size < 1 or config.total_steps < 1:
        problems.append("batch_size and total_steps must be >= 1")
    if not 0 <= config.ema_decay < 1:
        problems.append(f"ema_decay must be in [0, 1), got {config.ema_decay}")
    problems += evaluation.check(config)
    for key in ("log_every", "checkpoint_every"):
        if config[key] < 1:
            problems.append(f"{key} must be >= 1, got {config[key]}")
    if problems:
        raise ValueError("bad config: " + "; ".join(problems))


def _check_batch(config, mesh) -> None:
    div = batch_divisor(mesh)
    if config.batch_size % div:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {div} devices that split the batch "
                         f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple of {div}")
    if config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} hosts")


def load_vae(config, model_cfg):
    """(params, VAEConfig) of data.vae, checked against the model's latent shape; None without one."""
    if not config.data.vae:
        return None
    from dit_jax.weights import load_vae_weights
    params, vae_config = load_vae_weights(config.data.vae)
    factor = vae_config.downsample_factor
    if vae_config.scaling_factor != config.data.latent_scale:
        raise ValueError(f"data.latent_scale {config.data.latent_scale} differs from the VAE's scaling factor "
                         f"{vae_config.scaling_factor} ({config.data.vae})")
    if (model_cfg.in_channels != vae_config.latent_channels
            or model_cfg.input_size * factor != config.data.image_size):
        raise ValueError(f"the VAE in {config.data.vae} maps {config.data.image_size} px images to "
                         f"{config.data.image_size // factor}x{config.data.image_size // factor}x"
                         f"{vae_config.latent_channels} latents, but the model takes {model_cfg.input_size}x"
                         f"{model_cfg.input_size}x{model_cfg.in_channels}")
    return params, vae_config


def make_grid_sampler(config, model_cfg, mesh, vae_config=None):
    """The sample grids' jitted sampler over the run's mesh, built once per run."""
    from dit_jax.sample import make_batch_sampler
    s = config.sample
    return make_batch_sampler(model_cfg, create_diffusion(s.steps, learn_sigma=model_cfg.learn_sigma,
                                                          noise_schedule=config.diffusion.noise_schedule,
                                                          diffusion_steps=config.diffusion.num_timesteps),
                              batch_sharding(mesh), s.cfg_scale, s.cfg_mode, s.sampler,
                              vae_config=vae_config if config.data.latents else None, uint8=True)


def sample_grid(config, model_cfg, ema_params, step: int, workdir: str, sampler, vae_params=None) -> str | None:
    """EMA samples as a PNG grid, sampled by all hosts and written by process 0; latent models are
    decoded with the VAE (skipped without one)."""
    from dit_jax.sample import fetch, save_grid
    if config.data.latents and vae_params is None:
        return None
    s = config.sample
    labels = np.arange(s.num) % model_cfg.num_classes
    images = fetch(sampler(ema_params, labels, jax.random.PRNGKey(config.seed + 1), vae_params), s.num)
    if jax.process_index() != 0:
        return None
    path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_grid(images, path, nrow=min(model_cfg.num_classes, s.num), upscale=max(1, 64 // images.shape[1]))
    return path


def train_and_evaluate(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Train `config` in `workdir` (resuming from its latest checkpoint). Returns the last metrics.

    stop_after: stop (as a crash would) after this many steps of this call, with no save beyond the
    regular checkpoints.
    """
    validate(config)
    workdir = os.path.abspath(workdir)
    model_cfg = to_dit_config(config.model)
    mesh = make_mesh(**config.mesh)
    _check_batch(config, mesh)
    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    try:
        return _train(config, workdir, model_cfg, mesh, log, stop_after)
    finally:
        log.close()


def _train(config, workdir, model_cfg, mesh, log, stop_after):
    from dit_jax.data.pipeline import close as close_loader, make_train_loader, to_global

    log.print(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices on {jax.process_count()} host(s); "
              f"model {config.model.name} ({model_cfg.depth} blocks, hidden {model_cfg.hidden_size})")

    diffusion = create_diffusion("", learn_sigma=model_cfg.learn_sigma, noise_schedule=config.diffusion.noise_schedule,
                                 diffusion_steps=config.diffusion.num_timesteps)
    vae = load_vae(config, model_cfg)
    tx = make_optimizer(config.optim)
    abstract = abstract_state(model_cfg, tx, config.seed)
    shardings = logical_shardings(abstract, mesh)
    abstract_placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                   nn.unbox(abstract), shardings)

    manager = ckpt.make_manager(workdir, config.keep_checkpoints, 1, config.async_checkpointing)
    cfg_json = ckpt.config_json(config)
    latest = manager.latest_step()
    if latest is not None:
        ckpt.check_compatible(ckpt.stored_config(manager, latest), cfg_json, workdir)
        state = ckpt.restore(manager, latest, abstract_placed)
        log.print(f"resumed from step {latest} in {workdir}/checkpoints")
    else:
        init_params = None
        if config.get("init_weights", ""):
            from dit_jax.weights import load_weights
            init_params, _ = load_weights(config.init_weights, model_cfg)
            log.print(f"initialised from weights {config.init_weights}")
        with jax.set_mesh(mesh):
            state = jax.jit(lambda p: nn.unbox(create_state(model_cfg, tx, config.seed, p)),
                            out_shardings=shardings)(init_params)
    start = int(jax.device_get(state.step))
    data_iter = iter(make_train_loader(config.data, config.batch_size, config.seed, start))

    step_fn = jax.jit(partial(train_step, model=DiT(model_cfg), diffusion=diffusion, tx=tx,
                              ema_decay=config.ema_decay, input_mode=config.data.latents,
                              vae_config=vae[1] if vae else None, latent_scale=config.data.latent_scale),
                      in_shardings=(shardings, batch_sharding(mesh), replicated(mesh)),
                      out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
    vae_params = jax.device_put(vae[0], replicated(mesh)) if vae else None  # uploaded once for the run
    vae_config = vae[1] if vae else None
    grid_sampler = make_grid_sampler(config, model_cfg, mesh, vae_config) if config.sample.every else None
    eval_sampler = evaluation.make_sampler(config, model_cfg, mesh, vae_config) if config.eval.kind else None

    flops_per_image = 3 * 2 * forward_macs(model_cfg)  # forward + backward (2x), MACs -> FLOPs
    peak = config.peak_tflops_per_device * 1e12 or peak_flops(jax.devices()[0])
    preempted = Watch(manager)
    metrics, last = {}, {}
    t_mark, step_mark = time.time(), start
    total = config.total_steps
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        for step in range(start, total):
            batch = to_global(next(data_iter), batch_sharding(mesh))
            state, metrics = step_fn(state, batch, vae_params if config.data.latents == "encode" else None)
            done = step + 1
            if done % config.log_every == 0 or done == total:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                dt = time.time() - t_mark
                img_s = (done - step_mark) * config.batch_size / dt
                last.update(img_per_s=img_s, step=done)
                if peak:
                    last["mfu"] = img_s * flops_per_image / (peak * jax.device_count())
                log.write(done, total, last, eta_s=(total - done) * dt / max(done - step_mark, 1))
                t_mark, step_mark = time.time(), done
            stop = preempted()
            t_side = time.time()  # time spent below (saves, evaluations, grids) is not training time
            saved = done % config.checkpoint_every == 0 or done == total or stop
            if saved:
                ckpt.save(manager, done, state, cfg_json, force=stop)
            if config.eval.kind and config.eval.every and done % config.eval.every == 0 and done != total and not stop:
                scores = evaluation.evaluate(config, model_cfg, state.ema_params, eval_sampler, vae_params, preempted)
                if scores is not None:
                    log.print(evaluation.describe(config, scores))
                    log.scalars(done, scores)
            if config.sample.every and (done % config.sample.every == 0 or done == total) and not preempted():
                path = sample_grid(config, model_cfg, state.ema_params, done, workdir, grid_sampler, vae_params)
                if path:
                    log.print(f"EMA samples: {path}")
            if preempted() and not saved:  # signalled during the evaluation
                ckpt.save(manager, done, state, cfg_json, force=True)
            t_mark += time.time() - t_side
            if stop_after is not None and done - start >= stop_after:
                manager.wait_until_finished()
                close_loader(data_iter)
                return last
            if preempted():
                manager.wait_until_finished()
                close_loader(data_iter)
                log.print(f"preempted: checkpoint saved at step {done}; rerun with the same workdir to resume")
                raise Preempted(done)
    manager.wait_until_finished()
    close_loader(data_iter)
    if config.eval.kind:
        scores = final_evaluation(config, model_cfg, state.ema_params, workdir, log, eval_sampler, vae_params,
                                  preempted)
        if scores is None:
            log.print(f"preempted during the final evaluation; the checkpoint of step {total} is saved: "
                      "`dit-jax evaluate` or a rerun with the same workdir scores it")
            raise Preempted(total)
        last.update(scores)
    return last


def final_evaluation(config, model_cfg, ema_params, workdir: str, log: MetricsLog, sampler=None, vae_params=None,
                     stop=lambda: False) -> dict | None:
    """The quality scores of the final EMA weights, printed and written to WORKDIR/eval_scores.json
    (and demo_scores.json for the demo's digits scores); None if `stop()` interrupted it."""
    sampler = sampler or evaluation.make_sampler(config, model_cfg, make_mesh(**config.mesh))
    scores = evaluation.evaluate(config, model_cfg, ema_params, sampler, vae_params, stop)
    if scores is None:
        return None
    log.print(evaluation.describe(config, scores))
    if jax.process_index() == 0:
        names = ["eval_scores.json"] + (["demo_scores.json"] if config.eval.kind == "digits" else [])
        for name in names:
            with open(os.path.join(workdir, name), "w") as f:
                json.dump(scores, f, indent=2)
    return scores
