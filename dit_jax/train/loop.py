"""The one training loop: mesh -> data -> model -> shardings -> jit -> loop.

The same program runs on a laptop, an 8-device CPU mesh, or every host of a pod slice: each host
feeds its slice of the global batch, the jitted step runs on all devices, checkpoints are
written by all hosts together, and a restart with the same workdir resumes where it stopped.
"""

from __future__ import annotations

import math
from contextlib import closing, nullcontext

import flax.linen as nn
import jax

from dit_jax import storage, workdir_lock
from dit_jax.data.pipeline import DevicePrefetch, make_train_loader
from dit_jax.exit_codes import Preempted
from dit_jax.models.dit import forward_macs
from dit_jax.parallel.mesh import describe as describe_mesh
from dit_jax.parallel.sharding import LOGICAL_RULES, replicated
from dit_jax.sampling import grids
from dit_jax.train import (checkpoint as ckpt, evaluators as evaluation, final_scores, lost_run, phema_snapshots,
                           profile, repa)
from dit_jax.train.compilation_cache import configure as configure_compilation_cache
from dit_jax.train.goodput import Ledger
from dit_jax.train.integrity import NonFiniteWatch
from dit_jax.train.metrics_log import MetricsLog, peak_flops
from dit_jax.train.preemption import Watch
from dit_jax.train.programs import build_train_step, check_batch, vae_argument
from dit_jax.run import Run, make_run
from dit_jax.train.timing import SaveClock, StepTimer, log_fields
from dit_jax.train.validation import validate


def train_and_evaluate(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Train `config` in `workdir` (resuming from its latest checkpoint). Returns the last metrics.

    stop_after: stop (as a crash would) after this many steps of this call, with no save beyond the
    regular checkpoints.
    """
    validate(config)
    storage.require_local(config.data.data_dir, "data.data_dir")
    configure_compilation_cache(config.compilation_cache_dir)
    workdir = str(storage.resolve(workdir))
    run = repa.attach(make_run(config))
    check_batch(config, run.mesh)
    lock = workdir_lock.take(workdir)
    try:  # before the metrics log and the checkpoint manager create their files
        lost_run.check(workdir, config.get("start_over", False))
    except BaseException:
        lock.release()
        raise
    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    manager = ckpt.make_manager(workdir, config.keep_checkpoints, 1, config.async_checkpointing)
    preempted = Watch(manager)
    snapshots = phema_snapshots.make_writer(workdir, config)  # post-hoc EMA snapshots, None when off
    ok = False
    try:
        last = _train(run, workdir, log, stop_after, manager, preempted, snapshots)
        ok = True
        return last
    except Preempted:
        ok = True  # saved and finished writing: a clean stop
        raise
    finally:  # on any error too: no save left running, no temporary checkpoint left behind
        preempted.close()
        phema_snapshots.close(snapshots)
        ckpt.close(manager, failed=not ok)
        log.close()
        lock.release()


def sampling_slots(evaluators) -> dict[str, int]:
    """The first preemption-watch slot of each evaluator's sampling batches after a step, and of the grid
    ("grid"); "total": the slots in all. The same on every host: a question names its batch, not a count."""
    first, n = {}, 1
    for ev in evaluators:
        first[ev.name] = n
        n += math.ceil(ev.section.num_samples / ev.section.batch_size)
    first["grid"] = n
    first["total"] = n
    return first


def _train(run: Run, workdir, log, stop_after, manager, preempted: Watch, snapshots=None):
    config, mesh, model_cfg = run.config, run.mesh, run.model
    ledger = Ledger(workdir, enabled=jax.process_index() == 0)  # from here, this session's wall time
    program = _announce(run, build_train_step(run), log)

    cfg_json = ckpt.config_json(config)
    state = _start_state(program, manager, cfg_json, workdir, log, config, model_cfg)
    start = int(jax.device_get(state.step))
    ledger.begin(start)
    log.truncate_after(start)  # rows past the checkpoint are re-run: one row per step
    data_iter = DevicePrefetch(iter(make_train_loader(config.data, config.batch_size, config.seed, start)),
                               program.batch_sharding, config.data.prefetch_to_device)

    vae_params = jax.device_put(run.vae.params, replicated(mesh)) if run.vae else None  # uploaded once for the run
    step_vae = vae_argument(run, vae_params)  # the step encodes with it (REPA: with the frozen encoders)
    grid_sampler = grids.make_grid_sampler(run) if config.sample.every else None
    evaluators = evaluation.make_evaluators(run)
    slots = sampling_slots(evaluators)
    preempted.begin(start, config.total_steps, slots["total"])

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
                state, metrics = program.step(state, batch, step_vae)
            done = step + 1
            watch.update(metrics, done)
            ckpt.check_writes(manager)
            log_step = done % config.log_every == 0 or done == total
            if log_step:
                last = _log_step(run, metrics, timer, ledger, log, step_mark, done, peak)
                step_mark = done
                watch.check(workdir, manager.latest_step())
            # The one agreement per step, asked by every host: sampling below asks at its own positions.
            stop = preempted.at_step(done)
            saved = (done % config.checkpoint_every == 0 or done == total or stop
                     or save_clock.due(log_step, jax.process_count()))
            if saved:
                watch.check(workdir, manager.latest_step())
                with timer.measure("checkpoint"):
                    ckpt.save(manager, done, state, cfg_json, force=stop)
                save_clock.saved()
            if snapshots is not None and phema_snapshots.due(config, done):
                with timer.measure("checkpoint"):
                    phema_snapshots.save(snapshots, done, state.phema, config)
            t_side = timer.clock()  # time spent below (evaluations, grids) is not training time
            _sample_after_step(run, state, done, stop, evaluators, slots, preempted, vae_params, grid_sampler,
                               workdir, log)
            if preempted.reached and not saved:  # signalled during the evaluation
                with timer.measure("checkpoint"):
                    ckpt.save(manager, done, state, cfg_json, force=True)
            timer.add("other", since=t_side)
            if stop_after is not None and done - start >= stop_after:
                ckpt.finish_writes(manager)
                return last
            if preempted.reached:
                profiler.stop(state)
                _stop_preempted(manager, lambda: _close_books(ledger, timer, step_mark, done, log), done, log)
    profiler.stop(state)
    ckpt.finish_writes(manager)
    if evaluators:
        last.update(_final_evaluation(run, state, evaluators, slots, preempted, vae_params, workdir, log,
                                      lambda: _close_books(ledger, timer, step_mark, total, log), timer, start))
    last["goodput"] = _close_books(ledger, timer, step_mark, total, log, finished=True)["goodput"]
    return last


def _start_state(program, manager, cfg_json: str, workdir: str, log, config, model_cfg):
    """The state to train from: the newest good checkpoint's, or a fresh one (config.init_weights or random)."""
    state, latest = ckpt.resume(manager, program.abstract_state, cfg_json, workdir, say=log.print)
    if latest is not None:
        log.print(f"resumed from step {latest} in {workdir}/checkpoints")
        return state
    return program.init(_initial_params(config, model_cfg, log))


def _initial_params(config, model_cfg, log):
    """The converted weights config.init_weights names, or None (a random init)."""
    if not config.get("init_weights", ""):
        return None
    from dit_jax.weights import load_weights
    params, _ = load_weights(config.init_weights, model_cfg)
    log.print(f"initialised from weights {config.init_weights}")
    return params


def _stop_preempted(manager, close_books, done: int, log) -> None:
    """A stop agreed at step `done`, whose checkpoint is saved: the writes finished, the books closed."""
    ckpt.finish_writes(manager)
    close_books()
    log.print(f"preempted: checkpoint saved at step {done}; rerun with the same workdir to resume")
    raise Preempted(done)


def _announce(run: Run, program, log):
    """The mesh, the model and the program's notes, before anything is compiled."""
    config, mesh, model_cfg = run.config, run.mesh, run.model
    log.print(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices on {jax.process_count()} host(s) "
              f"({describe_mesh(mesh, config.mesh)}); "
              f"model {config.model.name} ({model_cfg.depth} blocks, hidden {model_cfg.hidden_size})")
    for line in program.notes:
        log.print(line)
    return program


def _log_step(run: Run, metrics, timer, ledger: Ledger, log, step_mark: int, done: int, peak: float):
    """The metrics of the steps since `step_mark`, timed and written (metrics.jsonl, TensorBoard, the screen)."""
    config, total = run.config, run.config.total_steps
    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
    window = timer.window()
    ledger.add(window, step_mark, done)
    flops_per_image = 3 * 2 * forward_macs(run.model)  # forward + backward (2x), MACs -> FLOPs
    last.update(log_fields(window, done - step_mark, total - done, config.batch_size,
                           flops_per_image, peak * jax.device_count()), step=done,
                goodput=ledger.update()["goodput"])
    if "compile_s" in last:
        log.print(f"compiled the train step in {last['compile_s']:.1f} s")
    log.write(done, total, last, eta_s=last["eta_s"])
    return last


def _sample_after_step(run: Run, state, done: int, stop: bool, evaluators, slots, preempted: Watch, vae_params,
                       grid_sampler, workdir: str, log) -> None:
    """The evaluations and the EMA sample grid due after step `done` (none once a stop is agreed)."""
    config, total = run.config, run.config.total_steps
    for ev in evaluators:
        if stop or preempted.reached or not evaluation.itstime(done, ev.section.every, total):
            continue
        scores = evaluation.evaluate(run, ev, state.ema_params, vae_params,
                                     _asker(preempted, done, slots[ev.name]),
                                     progress=evaluation.progress_lines(log, ev))
        if scores is not None:
            log.print(evaluation.describe(ev, scores))
            log.scalars(done, scores)
    if (grid_sampler and evaluation.itstime(done, config.sample.every, total, last=True)
            and not preempted.within(done, slots["grid"])):
        path = grids.sample_grid(run, state.ema_params, done, workdir, grid_sampler, vae_params)
        if path:
            log.print(f"EMA samples: {path}")


def _final_evaluation(run: Run, state, evaluators, slots, preempted: Watch, vae_params, workdir: str, log,
                      close_books, timer, start: int) -> dict:
    """The final EMA weights scored by every evaluator; Preempted (after closing the books) if a stop
    was agreed during it. A finished run rerun (`start` == total_steps) reads back the scores it wrote."""
    total = run.config.total_steps
    written = final_scores.reuse(workdir, evaluators, start, total, log.print)
    if written is not None:
        return written
    with timer.measure("other"):  # evaluation time, not training time, in the goodput ledger
        scores = evaluation.final_evaluation(run, evaluators, state.ema_params, workdir, log, vae_params,
                                             lambda ev: _asker(preempted, total, slots[ev.name]), step=total)
    if scores is None:
        log.print(f"preempted during the final evaluation; the checkpoint of step {total} is saved: "
                  "`dit-jax evaluate` or a rerun with the same workdir scores it")
        close_books()
        raise Preempted(total)
    return scores


def _close_books(ledger: Ledger, timer, step_mark: int, step: int, log, finished: bool = False) -> dict:
    """The time since the last log line into the ledger (steps up to `step`), written and printed;
    `finished`: the run reached total_steps (the time until a later session is idle, not lost)."""
    ledger.add(timer.window(), step_mark, step)
    summary = ledger.update(finished=finished)
    log.print(ledger.describe(summary))
    return summary


def _asker(preempted: Watch, step: int, first_slot: int):
    """stop(batch_index) for one evaluator's sampling batches after `step`."""
    return lambda batch: preempted.within(step, first_slot + batch)
