"""Speed of the real training step, input pipeline and sampler, beside the PyTorch reference.

    dit-jax benchmark --config configs/dit.py:XL/2 --config.data.latents=dataset \\
        --setting batch=32 --setting batch=256,remat=full --sample-steps 250 --cfg-scale 1.5 --torch

It takes the training config (`--config`, `--config.FIELD=VALUE`; without one the paper's recipe for
`--model` on a latent dataset) and, for each setting (batch per device, compute dtype, attention, remat
policy, scan over blocks) laid over it, builds the train step with the training loop's own builder
(`train/programs.py`: the config's objective, mesh, FSDP/ZeRO-1 sharding, input, donated state) and
times it after warm-up with
`block_until_ready`: once on synthetic latents already on the devices (the step alone), once fed by
the real Grain pipeline from a latent dataset (a small synthetic one is built unless --data-dir
names one), and the pipeline alone, to show whether input keeps up. The jitted sampler (N steps,
classifier-free guidance, one compiled loop) is timed per distinct (dtype, attention, scan).
`--torch` runs the reference in a process of its own (dit_jax.benchmark.reference) first.

One table: img/s, ms per step (per sampling step for samplers), MFU against the device's nominal
bf16 peak (`dit_jax.train.metrics_log.peak_flops`; blank where unknown, e.g. CPU), peak device
memory (`memory_stats`, none on CPU; the process's running peak, so rows after a larger one may
repeat it), compile seconds and the ratio to the best PyTorch row of the same kind and batch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.benchmark.ratios import WIDE_SPREAD, add_ratios, format_ratio, paired_ratio  # noqa: F401 (re-exported)
from dit_jax.models.dit import ATTENTION, DTYPES, REMAT, DiTConfig, forward_macs

LATENT_DATASET = "benchmark_latents"


@dataclasses.dataclass(frozen=True)
class Setting:
    batch: int                 # per device
    dtype: str = "bfloat16"
    attention: str = "cudnn"
    remat: str = "none"
    scan: bool = False

    def label(self) -> str:
        return (f"b{self.batch} {self.dtype} {self.attention} remat={self.remat}"
                + (" scan" if self.scan else ""))

    def model(self, base: DiTConfig) -> DiTConfig:
        return dataclasses.replace(base, dtype=self.dtype, attention=self.attention, remat=self.remat,
                                   scan_blocks=self.scan)

    def apply(self, config, num_devices: int):
        """The training config this setting times: its batch per device and model choices over `config`."""
        c = copy.deepcopy(config)
        c.batch_size = self.batch * num_devices
        c.model.update(dtype=self.dtype, attention=self.attention, remat=self.remat, scan_blocks=self.scan)
        return c

    @classmethod
    def of(cls, config, num_devices: int) -> "Setting":
        """The setting a training config already has (its batch split over `num_devices`)."""
        m = config.model
        return cls(batch=max(1, config.batch_size // num_devices), dtype=m.dtype, attention=m.attention,
                   remat=m.remat, scan=m.scan_blocks)


def parse_setting(spec: str, defaults: Setting) -> Setting:
    """'batch=256,remat=full' over the defaults; every key must be a Setting field."""
    fields = {f.name: f.type for f in dataclasses.fields(Setting)}
    values = {}
    for part in filter(None, spec.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ValueError(f"bad --setting {spec!r}: expected key=value pairs with keys {sorted(fields)}")
        if key == "batch":
            values[key] = int(value)
        elif key == "scan":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"bad --setting {spec!r}: scan is true or false")
            values[key] = value.lower() in ("true", "1")
        else:
            values[key] = value.strip()
    s = dataclasses.replace(defaults, **values)
    choices = {"dtype": tuple(DTYPES), "attention": ATTENTION, "remat": REMAT}
    for key, allowed in choices.items():
        if getattr(s, key) not in allowed:
            raise ValueError(f"bad --setting {spec!r}: {key} must be one of {allowed}")
    if s.batch < 1:
        raise ValueError(f"bad --setting {spec!r}: batch must be >= 1")
    return s


def config_and_settings(args, config):
    """(training config, settings) that `dit-jax benchmark` times, from its parsed flags and the config
    its `--config=FILE` / `--config.FIELD=VALUE` arguments describe (dit_jax.cli.benchmark)."""
    from dit_jax.configs.base import model_fields
    if args.model:  # replaces config.model, then the size flags below apply
        config.model = model_fields(args.model)
    sizes = dict(input_size=args.input_size, num_classes=args.num_classes, in_channels=args.in_channels,
                 num_heads=args.num_heads, depth=args.depth, hidden_size=args.hidden_size)
    config.model.update({k: v for k, v in sizes.items() if v is not None})
    config.data.num_classes = config.model.num_classes
    chosen = dict(batch=args.batch, dtype=args.dtype, attention=args.attention, remat=args.remat,
                  scan=args.scan or None)
    defaults = dataclasses.replace(Setting.of(config, 1), **{k: v for k, v in chosen.items() if v is not None})
    return config, [parse_setting(spec, defaults) for spec in args.setting] or [parse_setting("", defaults)]


def torch_reference(given: str) -> str:
    """The official DiT checkout that --torch times (`given`, else the tests' copy beside the package)."""
    reference = given or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                      "tests", "torch_reference")
    if not os.path.isfile(os.path.join(reference, "models.py")):
        raise FileNotFoundError(f"--torch: no models.py in {reference}: pass --reference DIR (a DiT checkout)")
    return reference


def peak_memory_gib(device) -> float | None:
    stats = device.memory_stats()  # None on CPU
    return stats["peak_bytes_in_use"] / 2**30 if stats and "peak_bytes_in_use" in stats else None


def _is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


# ----------------------------------------------------------------------------- the train step


def bench_run(config, setting: Setting, mesh):
    """The training run of `config` under `setting` on `mesh`; a step that encodes gets a VAE of random
    weights when the config names none (the time does not depend on the values)."""
    from dit_jax.run import VAE, make_run
    c = setting.apply(config, mesh.size)
    vae = "load"
    if c.data.latents == "encode" and not c.data.vae:
        from dit_jax.models.vae import AutoencoderKL, VAEConfig
        vae_config = VAEConfig()
        size = c.data.image_size
        vae = VAE(jax.jit(AutoencoderKL(vae_config).init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"],
                  vae_config)
    elif not c.data.vae:
        vae = None
    from dit_jax.train.repa import attach
    return attach(make_run(c, vae=vae, mesh=mesh), "load" if c.repa.weights else "random")


def synthetic_batch(run, seed: int = 0) -> dict:
    """A global batch of the shapes and dtypes the input pipeline sends (`programs.abstract_batch`),
    already on the devices: uint8 pixels, or a latent dataset's float16 posterior mean/std."""
    from dit_jax.train.programs import abstract_batch
    rng = np.random.default_rng(seed)
    out = {}
    for key, spec in abstract_batch(run).items():
        if key == "label":
            host = rng.integers(0, run.model.num_classes, spec.shape).astype(spec.dtype)
        elif key == "std":
            host = np.full(spec.shape, 0.1, spec.dtype)
        elif spec.dtype == np.uint8:
            host = rng.integers(0, 256, spec.shape).astype(np.uint8)
        else:
            host = rng.standard_normal(spec.shape).astype(spec.dtype)
        out[key] = jax.device_put(host, spec.sharding)
    return out


def lowered_step(run, batch, vae_params=None):
    """The train step of `run` lowered for the benchmark's arguments (what it compiles and times)."""
    import flax.linen as nn

    from dit_jax.parallel.sharding import LOGICAL_RULES
    from dit_jax.train.programs import build_train_step
    program = build_train_step(run)  # outside the rules' context, as the loop builds it
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(LOGICAL_RULES):
        return program, program.step.lower(program.abstract_state, batch, vae_params)


def _timed_steps(step, state, next_batch, steps: int, warmup: int, vae_params=None):
    for _ in range(warmup):
        state, metrics = step(state, next_batch(), vae_params)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next_batch(), vae_params)
    jax.block_until_ready((state, metrics))
    return state, (time.perf_counter() - t0) / steps, float(metrics["loss"])


def time_train(config, setting: Setting, mesh, steps: int, warmup: int, loader=None, pairs=None) -> list[dict]:
    """Rows for one setting: the training step of `config` under it, built by `programs.build_train_step`
    as the training loop builds it, on synthetic input already on the devices; and fed by `loader`.
    `pairs` (a TorchSession and a count): the synthetic row's steps timed in that many repetitions, each
    followed by one of the reference's, so both sides see the same load (`paired_s`)."""
    import flax.linen as nn

    from dit_jax.data.pipeline import DevicePrefetch
    from dit_jax.parallel.sharding import LOGICAL_RULES

    run = bench_run(config, setting, mesh)
    global_batch = run.config.batch_size
    base = dict(kind="train", impl="jax", batch=setting.batch, setting=setting.label())
    batch = synthetic_batch(run)
    from dit_jax.train.programs import vae_argument
    vae_params = vae_argument(run)
    t0 = time.perf_counter()
    program, lowered = lowered_step(run, batch, vae_params)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        analysis = compiled.memory_analysis()
        state = program.init(None)
        state, dt, loss = _timed_steps(compiled, state, lambda: batch, steps, warmup, vae_params)
        paired = {}
        if pairs:
            session, count = pairs
            paired = {"jax": [], "torch": []}
            for _ in range(count):
                state, one, loss = _timed_steps(compiled, state, lambda: batch, steps, 0, vae_params)
                paired["jax"].append(one)
                paired["torch"].append(session.train(setting.batch, steps))  # one device's batch
            dt = float(np.median(paired["jax"]))
        rows = [dict(base, input=f"synthetic {run.input_mode or 'pixels'}, on device", img_s=global_batch / dt,
                     step_ms=1e3 * dt, loss=loss, compile_s=compile_s, peak_gib=peak_memory_gib(jax.devices()[0]),
                     temp_gib=getattr(analysis, "temp_size_in_bytes", 0) / 2**30 if analysis else None,
                     **({"paired_s": paired} if paired else {})),
                time_checksum(state, base)]
        if loader is not None:
            it = iter(loader)
            batches = DevicePrefetch(it, program.batch_sharding)  # as the training loop feeds the step
            state, dt, loss = _timed_steps(compiled, state, lambda: next(batches), steps, warmup, vae_params)
            rows.append(dict(base, input="latent dataset (Grain)", img_s=global_batch / dt, step_ms=1e3 * dt,
                             loss=loss, compile_s=None, peak_gib=peak_memory_gib(jax.devices()[0])))
            rows.append(time_input(it, global_batch, steps, base))
            from dit_jax.data.pipeline import close
            close(it)
    flops = 3 * 2 * forward_macs(run.model)  # forward + backward (twice the forward), MACs -> FLOPs
    return [dict(r, flops_per_image=flops) for r in rows]


def time_checksum(state, base: dict, repeats: int = 3) -> dict:
    """The checksum every checkpoint save computes over the whole state (dit_jax.train.integrity): the
    time a save adds to the step it follows, besides Orbax's own."""
    from dit_jax.checksum import fingerprint
    t0 = time.perf_counter()
    fingerprint(state)  # compiles
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        fingerprint(state)  # returns host integers: synchronous
    dt = (time.perf_counter() - t0) / repeats
    return dict(base, kind="save", input="checkpoint checksum, per save", img_s=None, step_ms=1e3 * dt,
                compile_s=compile_s, peak_gib=None)


def time_input(it, global_batch: int, steps: int, base: dict) -> dict:
    """The input pipeline alone: host batches per second (what the step would have to wait for)."""
    next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = (time.perf_counter() - t0) / steps
    return dict(base, kind="input", input="latent dataset (Grain), no step", img_s=global_batch / dt,
                step_ms=1e3 * dt, compile_s=None, peak_gib=None)


def synthetic_latent_dataset(model_cfg: DiTConfig, data_dir: str, num_records: int) -> str:
    """A latent dataset of random posteriors in the layout `dit-jax extract-latents` writes."""
    import tensorflow_datasets as tfds

    from dit_jax.data.latents import LATENT_KEYS, dataset_builder
    shape = (model_cfg.input_size, model_cfg.input_size, model_cfg.in_channels)
    rng = np.random.default_rng(0)
    shard = os.path.join(data_dir, "latents_shard.npz")
    np.savez(shard, label=rng.integers(0, model_cfg.num_classes, num_records).astype(np.int64),
             **{k: (rng.standard_normal((num_records,) + shape) * (0.1 if k.startswith("std") else 1.0)).astype(
                 np.float16) for k in LATENT_KEYS})
    builder = dataset_builder(LATENT_DATASET, [shard], shape, "float16")(
        data_dir=data_dir, file_format=tfds.core.FileFormat.ARRAY_RECORD)
    builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
    os.remove(shard)
    return data_dir


def make_loader(model_cfg: DiTConfig, name: str, data_dir: str, global_batch: int, worker_count: int):
    from dit_jax.data.pipeline import make_train_loader
    data = dict(name=name, data_dir=data_dir, split="train", num_classes=model_cfg.num_classes, random_flip=True,
                worker_count=worker_count, worker_buffer_size=2)
    return make_train_loader(data, global_batch, seed=0)


# ----------------------------------------------------------------------------- the sampler


def bench_sampler(config, setting: Setting, batch: int, sample_steps: int, cfg_scale: float,
                  sampler: str = "ddpm"):
    """(run, sampler settings, sample(params, labels, key), params, labels): the run's sampler on
    `batch` images of one device, random weights, the latents not decoded."""
    from dit_jax.models.dit import init_params
    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler
    from dit_jax.run import make_run

    mesh = make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])
    run = make_run(setting.apply(config, 1), vae=None, mesh=mesh)
    params = jax.jit(partial(init_params, run.model))(jax.random.key(0))
    settings = SamplerSettings(sampler=sampler, steps=str(sample_steps), cfg_scale=cfg_scale)
    sample = build_sampler(dataclasses.replace(run, vae=None), settings)
    labels = np.arange(batch, dtype=np.int32) % run.model.num_classes
    return run, settings, sample, params, labels


def time_sample(config, setting: Setting, batch: int, sample_steps: int, cfg_scale: float, repeats: int,
                sampler: str = "ddpm", pairs=None) -> dict:
    """The run's sampler (`build_sampler`: one compiled loop over all steps) on `batch` images of one
    device, the latents not decoded. `pairs`: as time_train's, one sampling run per repetition (only
    for the reference's sampler, DDPM)."""
    run, settings, sample, params, labels = bench_sampler(config, setting, batch, sample_steps, cfg_scale, sampler)
    cfg = run.model
    t0 = time.perf_counter()
    jax.block_until_ready(sample(params, labels, jax.random.PRNGKey(0)))  # compiles
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(sample(params, labels, jax.random.PRNGKey(0)))  # warm-up
    t0 = time.perf_counter()
    for i in range(repeats):
        out = sample(params, labels, jax.random.PRNGKey(i + 1))
    jax.block_until_ready(out)
    dt = (time.perf_counter() - t0) / repeats
    paired = {}
    if pairs and settings.resolved(run.objective) == "ddpm":
        session, count = pairs
        paired = {"jax": [], "torch": []}
        for i in range(count):
            t0 = time.perf_counter()
            jax.block_until_ready(sample(params, labels, jax.random.PRNGKey(100 + i)))
            paired["jax"].append(time.perf_counter() - t0)
            paired["torch"].append(session.sample(batch))
        dt = float(np.median(paired["jax"]))
    halves = 2 if cfg_scale > 1 else 1  # guidance runs the model on [x, x]
    return dict(kind="sample", impl="jax", batch=batch,
                input=f"{sample_steps} {settings.resolved(run.objective)} steps, cfg {cfg_scale}",
                setting=dataclasses.replace(setting, batch=batch, remat="none").label().replace(" remat=none", ""),
                img_s=batch / dt, step_ms=1e3 * dt / sample_steps, compile_s=compile_s - dt,
                peak_gib=peak_memory_gib(jax.devices()[0]),
                flops_per_image=2 * forward_macs(cfg) * sample_steps * halves, **({"paired_s": paired} if paired else {}))


# ----------------------------------------------------------------------------- PyTorch and the report


def reference_model(model_cfg: DiTConfig) -> dict:
    """The reference's DiT(...) arguments for `model_cfg`."""
    return dict(input_size=model_cfg.input_size, patch_size=model_cfg.patch_size,
                in_channels=model_cfg.in_channels, hidden_size=model_cfg.hidden_size, depth=model_cfg.depth,
                num_heads=model_cfg.num_heads, mlp_ratio=model_cfg.mlp_ratio,
                class_dropout_prob=model_cfg.class_dropout_prob, num_classes=model_cfg.num_classes,
                learn_sigma=model_cfg.learn_sigma)


def torch_rows(reference: str, model_cfg: DiTConfig, train_batches: list[int], steps: int, warmup: int,
               sample_batch: int, sample_steps: int, cfg_scale: float, repeats: int, timeout: float) -> list[dict]:
    """The reference's rows from `python -m dit_jax.benchmark.reference` (a process of its own)."""
    request = dict(reference=os.path.abspath(reference), model=reference_model(model_cfg), train_batches=train_batches, steps=steps,
                   warmup=warmup, sample_batch=sample_batch, sample_steps=sample_steps, cfg_scale=cfg_scale,
                   sample_repeats=repeats)
    with tempfile.TemporaryDirectory() as tmp:
        req, out = os.path.join(tmp, "request.json"), os.path.join(tmp, "rows.json")
        with open(req, "w") as f:
            json.dump(request, f)
        proc = subprocess.run([sys.executable, "-m", "dit_jax.benchmark.reference", req, out], timeout=timeout,
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"the PyTorch benchmark failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            rows = json.load(f)
    for r in rows:
        r["flops_per_image"] = (3 * 2 * forward_macs(model_cfg) if r["kind"] == "train" else
                                2 * forward_macs(model_cfg) * sample_steps * (2 if cfg_scale > 1 else 1))
    return rows




@contextlib.contextmanager
def _torch_session(reference: str, model_cfg: DiTConfig, interleave: int, warmup: int, sample_steps: int,
                   cfg_scale: float, timeout: float):
    """The reference served one repetition at a time, for interleaved pairs; None without --interleave."""
    if not (reference and interleave):
        yield None
        return
    from dit_jax.benchmark.reference import TorchSession
    request = dict(reference=os.path.abspath(reference), model=reference_model(model_cfg), warmup=warmup,
                   sample_steps=sample_steps, cfg_scale=cfg_scale)
    with TorchSession(request, timeout) as session:
        yield session


def format_table(rows: list[dict]) -> str:
    header = (f"{'kind':<7}{'impl':<6}{'setting':<38}{'input':<34}{'img/s':>9}{'ms/step':>9}{'MFU':>7}"
              f"{'peak GiB':>9}{'compile s':>10}{'vs torch':>9}  spread")
    lines = [header, "-" * len(header)]

    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"
    wide = False
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['kind']:<7}{r['impl']:<6}{r['setting']:<38}{r.get('input', ''):<34}  {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        ratio, spread = format_ratio(r)
        wide = wide or bool(r.get("vs_torch_wide"))
        lines.append((f"{r['kind']:<7}{r['impl']:<6}{r['setting']:<38}{r.get('input', ''):<34}"
                      f"{num(r.get('img_s'), '.2f'):>9}{r['step_ms']:>9.2f}{mfu:>7}{num(r.get('peak_gib'), '.1f'):>9}"
                      f"{num(r.get('compile_s'), '.1f'):>10}{ratio:>9}  {spread}").rstrip())
    if wide:
        lines.append(f"WIDE: the interleaved repetitions' ratios spread by more than {WIDE_SPREAD:.0%} of their median "
                     "(the machine's load changed while timing): repeat on a quieter machine before trusting it")
    return "\n".join(lines)


def environment() -> dict:
    import flax
    device = jax.devices()[0]
    return dict(device_kind=device.device_kind, platform=device.platform, device_count=jax.device_count(),
                jax=jax.__version__, flax=flax.__version__, python=sys.version.split()[0])


def run_benchmark(config, settings: list[Setting], *, steps: int = 10,
                  warmup: int = 2, pipeline: bool = True, data_dir: str = "", dataset: str = "",
                  worker_count: int = 0, sample_steps: int = 250, cfg_scale: float = 1.5, sample_batch: int = 32,
                  sample_repeats: int = 1, samplers: tuple[str, ...] = ("",), torch_reference: str = "",
                  torch_timeout: float = 3600, interleave: int = 0, out: str = "", log=print) -> dict:
    """Time the training step of `config` under every setting (its mesh, sharding and input as training
    builds them), its samplers, and the reference with torch_reference; print the table, write JSON."""
    from dit_jax.parallel.mesh import make_mesh_from_config
    from dit_jax.configs.base import to_dit_config
    from dit_jax.train.metrics_log import peak_flops

    model_name = config.model.name
    model_cfg = to_dit_config(config.model)
    rows = []
    if torch_reference:  # first, before JAX takes the accelerator's memory
        log(f"timing the PyTorch reference in {torch_reference} ...")
        rows += torch_rows(torch_reference, model_cfg, sorted({s.batch for s in settings}), steps, warmup,
                           sample_batch, sample_steps, cfg_scale, sample_repeats, torch_timeout)
    mesh = make_mesh_from_config(config.mesh)
    pipeline = pipeline and config.data.latents == "dataset"  # the pipeline rows read a latent dataset
    with tempfile.TemporaryDirectory() as tmp, _torch_session(torch_reference, model_cfg, interleave, warmup,
                                                              sample_steps, cfg_scale, torch_timeout) as session:
        pairs = (session, interleave) if session else None
        if pipeline and not dataset:  # a synthetic latent dataset, big enough for a few distinct batches
            log("building a synthetic latent dataset for the input pipeline rows ...")
            num_records = 4 * max(s.batch for s in settings) * mesh.size
            data_dir, dataset = synthetic_latent_dataset(model_cfg, tmp, num_records), LATENT_DATASET
        for s in settings:
            loader = make_loader(model_cfg, dataset, data_dir, s.batch * mesh.size, worker_count) if pipeline else None
            log(f"train step: {model_name} {s.label()} ...")
            try:
                rows += time_train(config, s, mesh, steps, warmup, loader, pairs)
            except Exception as e:  # noqa: BLE001 -- a setting that does not fit is a result, not a crash
                if not _is_out_of_memory(e):
                    raise
                rows.append(dict(kind="train", impl="jax", batch=s.batch, setting=s.label(), error="out of memory"))
            gc.collect()
        if sample_steps:
            seen = set()
            for s in settings:
                for sampler in samplers:
                    key = (s.dtype, s.attention, s.scan, sampler)
                    if key in seen:
                        continue
                    seen.add(key)
                    log(f"sampler: {model_name} {key} batch {sample_batch}, {sample_steps} steps ...")
                    rows.append(time_sample(config, s, sample_batch, sample_steps, cfg_scale, sample_repeats,
                                            sampler, pairs))
                    gc.collect()
    add_ratios(rows, peak_flops(jax.devices()[0]), mesh.size)
    report = dict(model=model_name, model_config=model_cfg.to_dict(), environment=environment(),
                  mesh=dict(mesh.shape), shard_optimizer=bool(config.mesh.shard_optimizer),
                  input=config.data.latents or "pixels",
                  peak_tflops_per_device=peak_flops(jax.devices()[0]) / 1e12, steps=steps, warmup=warmup, rows=rows)
    log(f"{model_name} on {jax.device_count()} x {jax.devices()[0].device_kind}, mesh {dict(mesh.shape)}; batch per "
        "device; vs torch: JAX img/s per device over the best PyTorch row of the same kind and batch")
    log(format_table(rows))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
        log(f"wrote {out}")
    return report
