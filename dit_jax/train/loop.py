"""The one training loop: mesh -> data -> model -> shardings -> jit -> loop.

The same program runs on a laptop, an 8-device CPU mesh, or every host of a pod slice: each host
feeds its slice of the global batch, the jitted step runs on all devices, checkpoints are
written by all hosts together, and a restart with the same workdir resumes where it stopped.
"""

from __future__ import annotations

from contextlib import closing, nullcontext
from functools import partial

import flax.linen as nn
import jax

from dit_jax import storage
from dit_jax.models.dit import DiT, forward_macs
from dit_jax.parallel.mesh import describe as describe_mesh, make_mesh_from_config
from dit_jax.parallel.sharding import LOGICAL_RULES, batch_divisor, batch_sharding, replicated, state_shardings
from dit_jax.sampling import grids
from dit_jax.train import checkpoint as ckpt, evaluation, profile, workdir_lock
from dit_jax.train.compilation_cache import configure as configure_compilation_cache
from dit_jax.train.preemption import Watch
from dit_jax.train.config_base import run_diffusion, to_dit_config
from dit_jax.train.exit_codes import Preempted
from dit_jax.train.integrity import NonFiniteWatch
from dit_jax.train.metrics_log import MetricsLog, peak_flops
from dit_jax.train.state import abstract_state, create_state, make_optimizer
from dit_jax.train.step import train_step
from dit_jax.train.timing import SaveClock, StepTimer, log_fields
from dit_jax.train.validation import validate
from dit_jax.weights import load_run_vae


def _check_batch(config, mesh) -> None:
    div = batch_divisor(mesh)
    if config.batch_size % div:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {div} devices that split the batch "
                         f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple of {div}")
    if config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} hosts")


def train_and_evaluate(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Train `config` in `workdir` (resuming from its latest checkpoint). Returns the last metrics.

    stop_after: stop (as a crash would) after this many steps of this call, with no save beyond the
    regular checkpoints.
    """
    validate(config)
    storage.require_local(config.data.data_dir, "data.data_dir")
    configure_compilation_cache(config.compilation_cache_dir)
    workdir = str(storage.resolve(workdir))
    model_cfg = to_dit_config(config.model)
    mesh = make_mesh_from_config(config.mesh)
    _check_batch(config, mesh)
    lock = workdir_lock.take(workdir)
    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    manager = ckpt.make_manager(workdir, config.keep_checkpoints, 1, config.async_checkpointing)
    preempted = Watch(manager)
    ok = False
    try:
        last = _train(config, workdir, model_cfg, mesh, log, stop_after, manager, preempted)
        ok = True
        return last
    except Preempted:
        ok = True  # saved and finished writing: a clean stop
        raise
    finally:  # on any error too: no save left running, no temporary checkpoint left behind
        preempted.close()
        ckpt.close(manager, failed=not ok)
        log.close()
        lock.release()


def _train(config, workdir, model_cfg, mesh, log, stop_after, manager, preempted):
    from dit_jax.data.pipeline import DevicePrefetch, make_train_loader

    log.print(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices on {jax.process_count()} host(s) "
              f"({describe_mesh(mesh, config.mesh)}); "
              f"model {config.model.name} ({model_cfg.depth} blocks, hidden {model_cfg.hidden_size})")

    diffusion = run_diffusion(config)
    vae = load_run_vae(config, model_cfg)
    tx = make_optimizer(config.optim)
    abstract = abstract_state(model_cfg, tx, config.seed)
    shardings, sharding_notes = state_shardings(abstract, mesh, config.mesh)
    for line in sharding_notes:
        log.print(line)
    abstract_placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                   nn.unbox(abstract), shardings)

    cfg_json = ckpt.config_json(config)
    state, latest = ckpt.resume(manager, abstract_placed, cfg_json, workdir, say=log.print)
    if latest is not None:
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
    log.truncate_after(start)  # rows past the checkpoint are re-run: one row per step
    data_iter = DevicePrefetch(iter(make_train_loader(config.data, config.batch_size, config.seed, start)),
                               batch_sharding(mesh), config.data.prefetch_to_device)

    step_fn = jax.jit(partial(train_step, model=DiT(model_cfg), diffusion=diffusion, tx=tx,
                              ema_decay=config.ema_decay, input_mode=config.data.latents,
                              vae_config=vae[1] if vae else None, latent_scale=config.data.latent_scale),
                      in_shardings=(shardings, batch_sharding(mesh), replicated(mesh)),
                      out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
    vae_params = jax.device_put(vae[0], replicated(mesh)) if vae else None  # uploaded once for the run
    vae_config = vae[1] if vae else None
    grid_sampler = grids.make_grid_sampler(config, model_cfg, mesh, vae_config) if config.sample.every else None
    eval_sampler = evaluation.make_sampler(config, model_cfg, mesh, vae_config) if config.eval.kind else None

    flops_per_image = 3 * 2 * forward_macs(model_cfg)  # forward + backward (2x), MACs -> FLOPs
    peak = config.peak_tflops_per_device * 1e12 or peak_flops(jax.devices()[0])
    metrics, last = {}, {}
    timer, save_clock = StepTimer(), SaveClock(config.checkpoint_every_minutes)
    profiler = profile.StepProfiler(config.profile, workdir, start)
    step_mark, total = start, config.total_steps
    watch = NonFiniteWatch()
    # The loader's worker processes and the batches sent ahead go on any exit: finished, stopped, failed.
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES), closing(data_iter):
        for step in range(start, total):
            t_input = timer.clock()
            batch = next(data_iter)
            timer.add("input", since=t_input)
            with timer.measure("other"):  # starting or writing a trace is not training time
                annotation = profiler.step(step, state)
            # The first call traces and compiles the step (or loads it from the persistent cache).
            with annotation, timer.measure("compile") if step == start else nullcontext():
                state, metrics = step_fn(state, batch, vae_params if config.data.latents == "encode" else None)
            done = step + 1
            watch.update(metrics, done)
            ckpt.check_writes(manager)
            log_step = done % config.log_every == 0 or done == total
            if log_step:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                last.update(log_fields(timer.window(), done - step_mark, total - done, config.batch_size,
                                       flops_per_image, peak * jax.device_count()), step=done)
                if "compile_s" in last:
                    log.print(f"compiled the train step in {last['compile_s']:.1f} s")
                log.write(done, total, last, eta_s=last["eta_s"])
                step_mark = done
                watch.check(workdir, manager.latest_step())
            stop = preempted()
            saved = (done % config.checkpoint_every == 0 or done == total or stop
                     or save_clock.due(log_step, jax.process_count()))
            if saved:
                watch.check(workdir, manager.latest_step())
                with timer.measure("checkpoint"):
                    ckpt.save(manager, done, state, cfg_json, force=stop)
                save_clock.saved()
            t_side = timer.clock()  # time spent below (evaluations, grids) is not training time
            if config.eval.kind and config.eval.every and done % config.eval.every == 0 and done != total and not stop:
                scores = evaluation.evaluate(config, model_cfg, state.ema_params, eval_sampler, vae_params, preempted)
                if scores is not None:
                    log.print(evaluation.describe(config, scores))
                    log.scalars(done, scores)
            if config.sample.every and (done % config.sample.every == 0 or done == total) and not preempted():
                path = grids.sample_grid(config, model_cfg, state.ema_params, done, workdir, grid_sampler, vae_params)
                if path:
                    log.print(f"EMA samples: {path}")
            if preempted() and not saved:  # signalled during the evaluation
                with timer.measure("checkpoint"):
                    ckpt.save(manager, done, state, cfg_json, force=True)
            timer.add("other", since=t_side)
            if stop_after is not None and done - start >= stop_after:
                ckpt.finish_writes(manager)
                return last
            if preempted():
                profiler.stop(state)
                ckpt.finish_writes(manager)
                log.print(f"preempted: checkpoint saved at step {done}; rerun with the same workdir to resume")
                raise Preempted(done)
    profiler.stop(state)
    ckpt.finish_writes(manager)
    if config.eval.kind:
        scores = evaluation.final_evaluation(config, model_cfg, state.ema_params, workdir, log, eval_sampler,
                                             vae_params, preempted)
        if scores is None:
            log.print(f"preempted during the final evaluation; the checkpoint of step {total} is saved: "
                      "`dit-jax evaluate` or a rerun with the same workdir scores it")
            raise Preempted(total)
        last.update(scores)
    return last
