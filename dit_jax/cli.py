"""`dit-jax` command line: train | sample | evaluate | convert | export-weights | phema | benchmark | compile | ..."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dit_jax.argparsing import (OneLineParser, count, existing_dir, existing_file, existing_path, number, output_dir,
                                output_file, output_path)

DEMO_MODEL = dict(input_size=32, patch_size=4, in_channels=3, hidden_size=192, depth=4, num_heads=3,
                  num_classes=10)


def _model_config(args, default=None):
    """The named model (--model) with the size overrides given, else `default` with them, else None."""
    from dit_jax.models.dit import DiTConfig, dit_config
    overrides = {k: v for k, v in dict(input_size=args.input_size, num_classes=args.num_classes,
                                       in_channels=args.in_channels, num_heads=args.num_heads).items()
                 if v is not None}
    if args.model:
        return dit_config(args.model, **overrides)
    return None if default is None else DiTConfig(**{**default, **overrides})


def cmd_sample(args) -> int:
    """A class-conditional PNG grid, or with --num-samples the ADM .npz of the evaluation protocol."""
    from dit_jax.jobs.sample import sample
    _check_sample_args(args)
    classes = args.classes
    # A run's checkpoint names its own model; converted weights are checked against --model when given.
    config = None if args.workdir else _model_config(args, default=None if args.weights else DEMO_MODEL)
    from dit_jax.sampling.sampler import SamplerSettings
    settings = SamplerSettings(sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale, cfg_mode=args.cfg_mode,
                               eta=args.eta, cfg_interval=args.cfg_interval, spacing=args.spacing)
    sample(args.out, weights=args.weights, workdir=args.workdir, config=config, vae=args.vae, num=args.num,
           classes=classes, num_samples=args.num_samples, settings=settings, objective=args.objective,
           seed=args.seed, batch_per_device=args.batch_per_device, nrow=args.nrow, upscale=args.upscale,
           labels=args.labels, guide=args.guide)
    return 0


def _interval(text: str) -> tuple[float, float]:
    """--cfg-interval LO,HI: two noise levels in [0, 1]."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers, e.g. 0,0.7), got {text!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 <= LO <= HI <= 1, got {text!r}")
    return lo, hi


def _check_sample_args(args) -> None:
    """What would otherwise fail only after loading the model or sampling (or divide by zero while
    drawing the grid)."""
    from PIL import Image
    if args.num_samples < 0:
        raise ValueError(f"--num-samples must be >= 1 (or 0 for a grid), got {args.num_samples}")
    if args.weights and args.workdir:
        raise ValueError("give --weights or --workdir, not both")
    if args.labels != "random" and not args.num_samples:
        raise ValueError(f"--labels {args.labels} chooses the labels of --num-samples N; a grid takes --classes")
    if args.num_samples:
        if args.classes:
            raise ValueError("--num-samples draws uniform random labels (the evaluation protocol); drop --classes")
        if not args.out.endswith(".npz"):
            raise ValueError(f"--out must be an .npz path with --num-samples, got {args.out!r}")
        from dit_jax.sampling.npz import out_problem
        problem = out_problem(args.out)
        if problem:
            raise FileExistsError(problem)
        return
    if args.num < 1:
        raise ValueError(f"--num must be >= 1 (images in the grid), got {args.num}")
    Image.init()
    writable = sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)
    if os.path.splitext(args.out)[1].lower() not in writable:
        raise ValueError(f"--out {args.out!r}: the grid is written as an image, so the path must end in an image "
                         "extension such as .png or .jpg (or pass --num-samples N for an .npz of samples)")


def cmd_convert(args) -> int:
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.params import config_name
    from dit_jax.weights import load_weights, save_weights

    config = _model_config(args)
    if args.to_torch:
        _check_file_out(args.out, args.force, "a PyTorch state dict (.pt)")
        params, config = load_weights(args.to_torch, config)
        torch_io.save_state_dict(dit_torch.to_torch(params, config), args.out)
        print(f"wrote PyTorch state dict of {config_name(config)} to {args.out}")
        return 0
    if args.from_diffusers_vae:
        from dit_jax.convert.vae_torch import config_beside, load_diffusers_vae
        from dit_jax.weights import save_vae_weights
        vae_config = config_beside(args.from_diffusers_vae)
        path = save_vae_weights(args.out, load_diffusers_vae(args.from_diffusers_vae, vae_config), vae_config,
                                force=args.force)
        print(f"wrote Stable Diffusion VAE weights to {path}")
        return 0
    if args.from_torch:
        params, config = dit_torch.from_torch(torch_io.load_state_dict(args.from_torch, args.key), config,
                                              args.num_heads)
    else:
        sd = torch_io.load_diffusers_state_dict(args.from_diffusers)
        params, config = dit_torch.from_diffusers(sd, config, args.sample_size, args.num_heads)
    path = save_weights(args.out, params, config, force=args.force)
    print(f"wrote {config_name(config)} weights to {path}")
    print(json.dumps(config.architecture()))
    return 0


def _check_file_out(path: str, force: bool, what: str) -> None:
    """An output file may replace only a file, and only with --force."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"--out {path} is a directory; the output is a file ({what}): name a file")
    if os.path.exists(path) and not force:
        raise FileExistsError(f"--out {path} exists; choose a new path or pass --force to replace it")


def cmd_build_dataset(args) -> int:
    """A class-per-subfolder image directory -> a TFDS ArrayRecord dataset for training."""
    from dit_jax.data.digits import default_data_dir
    from dit_jax.data.image_folder import build_image_folder
    data_dir = args.data_dir or default_data_dir()
    from dit_jax import storage
    storage.require_local(data_dir, "--data-dir")
    path = build_image_folder(args.src_dir, data_dir, args.name)
    print(f"dataset {args.name!r} in {path}; train on it with --config.data.name={args.name} "
          f"--config.data.data_dir={data_dir}")
    return 0


def cmd_reference_batch(args) -> int:
    """An ADM-layout reference batch from any TFDS image dataset (ADM center crop to --image-size):
    Inception statistics of all images, and `--num-images` of them (shuffled by --seed) as arr_0."""
    from dit_jax.jobs.reference_batch import reference_batch, replace_problem
    _check_file_out(args.out, args.force, "an ADM reference batch .npz")
    problem = replace_problem(args.out) if os.path.exists(args.out) else None
    if problem:
        raise FileExistsError(problem)
    n, kept = reference_batch(args.dataset, args.data_dir, args.split, args.image_size, args.inception, args.out,
                              preprocess=args.preprocess, num_images=args.num_images, max_images=args.max_images,
                              batch_size=args.batch_size, chunk=args.chunk, seed=args.seed)
    print(f"wrote {args.out}: statistics of {n} images, {kept} images as arr_0")
    return 0


def cmd_extract_latents(args) -> int:
    """A TFDS image dataset -> a latent dataset of VAE posterior mean/std (image and flip)."""
    from dit_jax.jobs.extract_latents import extract_latents
    path = extract_latents(args.dataset, args.data_dir, args.image_size, args.vae, args.out_name,
                           out_data_dir=args.out_data_dir, split=args.split, batch_size=args.batch_size,
                           dtype=args.dtype, shard_size=args.shard_size)
    print(f"train on it with --config.data.latents=dataset --config.data.name={args.out_name} "
          f"--config.data.data_dir={path}")
    return 0


def cmd_models(args) -> int:
    """Parameter counts and forward MACs of the named models (the paper's Table 4)."""
    from dit_jax.models.dit import MODEL_NAMES, dit_config, forward_macs, param_count
    print(f"{'model':<10} {'input':>5} {'params':>13} {'ref. params*':>13} {'fwd GMACs':>10}")
    for name in MODEL_NAMES:
        cfg = dit_config(name, input_size=args.input_size or 32)
        n = param_count(cfg)
        print(f"{name:<10} {cfg.input_size:>5} {n:>13,} {n + cfg.num_tokens * cfg.hidden_size:>13,} "
              f"{forward_macs(cfg) / 1e9:>10.2f}")
    print("* the PyTorch reference counts its frozen sin-cos position table as a parameter; here it is a constant")
    return 0


HELP_FLAGS = ("-h", "--help", "--helpfull", "--helpshort")


def _positional_problem(positional: list[str]) -> str:
    first = positional[0]
    if ".py" in first:
        return f"unexpected argument {first!r}: to train with that config, pass --config={first}"
    return (f"unexpected argument(s) {positional}: dit-jax train takes only flags (--workdir=DIR, --config=FILE, "
            "--config.FIELD=VALUE); see dit-jax train --help")


def _train_help(f) -> str:
    """The flags and every config field (of --config, with the overrides given) with its value."""
    from ml_collections import config_dict
    lines = ["usage: dit-jax train [--config=FILE[:ARG]] [--workdir=DIR] [--config.FIELD=VALUE ...] [flags]", "",
             "flags:"]
    names = [fl.name for fl in f.get_flags_for_module(__name__) if fl.name != "config"]
    lines += [f"  --config: {f['config'].help} (default: configs/demo.py)"]
    lines += [f"  --{name}: {f[name].help} (default: {f[name].default_as_str})" for name in names]
    lines += ["", "config fields (set any with --config.FIELD=VALUE; `dit-jax train --config=FILE --help` lists "
              "that config's):"]

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, config_dict.ConfigDict):
                walk(value, f"{prefix}{key}.")
            else:
                lines.append(f"  {prefix}{key} = {value!r}")
    walk(f.config, "")
    return "\n".join(lines)


TRAIN_EXIT_CODES = """Exit codes: 0 finished, 75 preempted with a checkpoint saved (rerun to resume),
2 bad input, 3 diverged, 1 any other failure."""


def cmd_train(argv: list[str]) -> int:
    """Parsed with absl + ml_collections so that `--config.batch_size=64` overrides are typed; exit
    codes as TRAIN_EXIT_CODES (dit_jax/exit_codes.py)."""
    from absl import flags

    # Flags of this call only: a second `main(["train", ...])` in one process defines them afresh.
    f = flags.FlagValues()
    flags.DEFINE_string("workdir", "workdir/demo", "run directory: checkpoints, samples, metrics (resumed if present)",
                        flag_values=f)
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host; auto-detects "
                      "TPU pods and SLURM, else set --coordinator/--num_processes/--process_id)", flag_values=f)
    flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host without auto-detection)",
                        flag_values=f)
    flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)", lower_bound=1, flag_values=f)
    flags.DEFINE_integer("process_id", None, "this process's index (multi-host)", lower_bound=0, flag_values=f)
    flags.DEFINE_integer("distributed_timeout", 300, "seconds to wait for all processes to join "
                         "jax.distributed.initialize before failing", lower_bound=1, flag_values=f)
    flags.DEFINE_list("local_device_ids", None, "the accelerators this process drives, e.g. 0,1,2,3 (one process "
                      "per node driving all its GPUs; SLURM detection alone gives one GPU per task)", flag_values=f)
    flags.DEFINE_bool("dry_run", False, "check everything a run checks before its first step and print its plan "
                      "(mesh, batch per device and host, steps, epochs, checkpoints, evaluations); writes nothing "
                      "and joins no other process. Also spelled --dry-run", flag_values=f)
    flags.DEFINE_bool("check_files", True, "with --dry_run: check the dataset, the files the config names and "
                      "the workdir; --nocheck_files checks the config, mesh and batch only (a launch machine "
                      "that does not hold the hosts' disks)", flag_values=f)
    flags.DEFINE_integer("devices", None, "with --dry_run: plan for this many devices (all hosts, all slices); "
                         "default: this machine's", lower_bound=1, flag_values=f)
    argv = ["--dry_run" if a == "--dry-run" else a for a in argv]
    show_help = any(a in HELP_FLAGS for a in argv)
    _refuse_empty_flags(argv, [name for name in f])
    argv = ["dit-jax train"] + [a for a in argv if a not in HELP_FLAGS]
    from dit_jax.config_file import packaged_config, parse
    _, positional = parse(argv, f, packaged_config("demo.py"), "config file, e.g. configs/dit.py:XL/2")
    if show_help:
        print(_train_help(f) + "\n\n" + TRAIN_EXIT_CODES)
        return 0
    if positional:
        raise ValueError(_positional_problem(positional))
    if f.dry_run:
        return _dry_run(f)
    elif f["devices"].present or f["check_files"].present:
        raise ValueError("--devices and --check_files apply to a dry run: add --dry_run")
    from dit_jax.workdir_lock import workdir_problem
    problem = workdir_problem(f.workdir)
    if problem:
        raise ValueError(problem)
    local_ids = _device_ids(f.local_device_ids)
    if f.distributed or f.coordinator:
        import jax
        # A process that waits in vain is aborted by jax (exit 134, SIGABRT) after the timeout.
        print(f"joining jax.distributed: waiting up to {f.distributed_timeout} s for all processes "
              "(--distributed_timeout)", file=sys.stderr, flush=True)
        jax.distributed.initialize(f.coordinator, f.num_processes, f.process_id, local_device_ids=local_ids,
                                   initialization_timeout=f.distributed_timeout)
    elif local_ids is not None or f["distributed_timeout"].present:
        raise ValueError("--local_device_ids and --distributed_timeout apply to multi-host runs: add --distributed")
    from dit_jax import exit_codes
    from dit_jax.train.loop import train_and_evaluate
    try:
        train_and_evaluate(f.config, f.workdir)
    except (exit_codes.RunStopped, FloatingPointError) as e:  # the codes a retry loop acts on
        if not isinstance(e, exit_codes.Preempted):  # a preemption is announced by the loop
            print(f"error: {e}", file=sys.stderr)
        return exit_codes.exit_code(e)
    except RuntimeError as e:
        line = exit_codes.out_of_memory(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    return exit_codes.FINISHED


def _dry_run(f) -> int:
    import jax

    from dit_jax.train.plan import dry_run
    devices = f.devices or jax.device_count()
    hosts = f.num_processes or jax.process_count()
    for line in dry_run(f.config, f.workdir, devices=devices, hosts=hosts, files=f.check_files):
        print(line)
    print("dry run: every check passed; nothing was written")
    return 0


def _refuse_empty_flags(argv: list[str], names: list[str]) -> None:
    """`--workdir=` or `--coordinator ''`: a flag given an empty value (config fields may be empty:
    `--config.evals.digits.kind=` turns evaluations off)."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in names + ["config"]:
            continue
        if (eq and not value) or (not eq and i + 1 < len(argv) and argv[i + 1] == "" and name != "distributed"):
            raise ValueError(f"--{name} is empty: give a value, or leave it out for its default")


def _device_ids(values: list[str] | None) -> list[int] | None:
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        pass
    raise ValueError(f"--local_device_ids takes comma-separated integers like 0,1,2,3, got {','.join(values)!r}")


def cmd_evaluate(args) -> int:
    """FID, sFID, IS, precision and recall of a sample batch against an ADM reference batch."""
    from dit_jax.jobs.evaluate import evaluate
    out = evaluate(args.reference, args.samples, args.inception, args.out, preprocess=args.preprocess,
                   batch_size=args.batch_size, min_reference_images=args.min_reference_images)
    print(f"wrote {out}")
    return 0


def cmd_benchmark(args, config_args: list[str]) -> int:
    """Train step, input pipeline and sampler of a training config, timed per setting, beside the PyTorch
    reference (--torch). Without --config: the paper's recipe for --model on a latent dataset."""
    from dit_jax.benchmark.run import config_and_settings, run_benchmark
    config, settings = config_and_settings(args, config_args)
    reference = ""
    if args.interleave and not args.torch:
        raise ValueError("--interleave pairs our repetitions with the reference's: add --torch")
    if args.torch:
        reference = args.reference or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "tests", "torch_reference")
        if not os.path.isfile(os.path.join(reference, "models.py")):
            raise FileNotFoundError(f"--torch: no models.py in {reference}: pass --reference DIR (a DiT checkout)")
    run_benchmark(config, settings, steps=args.steps, warmup=args.warmup, pipeline=not args.no_pipeline,
                  data_dir=args.data_dir, dataset=args.dataset, worker_count=args.workers,
                  sample_steps=args.sample_steps, cfg_scale=args.cfg_scale, sample_batch=args.sample_batch,
                  sample_repeats=args.sample_repeats, samplers=tuple(args.sampler or [""]),
                  torch_reference=reference, interleave=args.interleave if args.torch else 0, out=args.out)
    return 0


def cmd_export_weights(args) -> int:
    """A training run's EMA (or raw) params at its latest (or given) step -> a weights directory, which
    `sample --weights`, `--config.init_weights` and `convert --to-torch` read."""
    from dit_jax import storage
    from dit_jax.train.checkpoint import load_ema
    from dit_jax.weights import save_weights
    checkpoints = storage.resolve(args.workdir) / "checkpoints"
    if not checkpoints.is_dir():
        raise FileNotFoundError(f"{args.workdir} is not a training run (no checkpoints/ in it): pass the --workdir "
                                "of a `dit-jax train` run")
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    if args.step is not None and args.step not in steps:
        raise ValueError(f"{args.workdir} has no checkpoint at step {args.step}; it has steps {steps}")
    which = "params" if args.raw else "ema_params"
    params, config, step = load_ema(args.workdir, args.step, params_key=which)
    path = save_weights(args.out, params, config, force=args.force)
    print(f"wrote the {'raw' if args.raw else 'EMA'} weights of {args.workdir} at step {step} to {path}")
    return 0


def cmd_phema(args) -> int:
    """Post-hoc EMA: the weights of any EMA length from a run's snapshots (EDM2's reconstruct_phema.py)."""
    from dit_jax.jobs.phema import reconstruct
    reconstruct(args.workdir, args.std, args.out, step=args.step, max_fit_error=args.max_fit_error,
                force=args.force)
    return 0


def _class_ids(text: str) -> list[int]:
    """--classes: '1,2,3' -> [1, 2, 3]."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of class ids (integers >= 0), "
                                         "e.g. 207,360,387")
    return [int(p) for p in parts]


def version() -> str:
    from importlib import metadata
    try:
        mine = metadata.version("dit-jax")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        mine = "unknown (not installed)"
    import jax
    return f"dit-jax {mine} (jax {jax.__version__}, {os.path.dirname(os.path.abspath(__file__))})"


def _add_model_args(p):
    p.add_argument("--model", help="named model, e.g. DiT-XL/2 (checked against the checkpoint)")
    p.add_argument("--input-size", type=count(1), help="latent/image side (32 for 256 px latents, 64 for 512 px)")
    p.add_argument("--num-classes", help="classes of the model (named models: 1000)", type=count(1))
    p.add_argument("--in-channels", type=count(1), help="input channels (4 for SD-VAE latents, 3 for RGB pixels)")
    p.add_argument("--num-heads", type=count(1), help="needed only for custom (non-named) checkpoints")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dit-jax", description=__doc__)
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="a class-conditional sample grid (PNG, JPEG, ...), or with --num-samples N "
                                      "the ADM .npz of N samples (the evaluation protocol)")
    s.add_argument("--weights", "--checkpoint", dest="weights", type=existing_dir,
                   help="weights directory written by `dit-jax convert` (default: random init)")
    s.add_argument("--workdir", type=existing_dir,
                   help="a training run: sample from its latest checkpoint's EMA weights")
    s.add_argument("--vae", type=existing_dir,
                   help="Stable Diffusion VAE weights dir (`dit-jax convert --from-diffusers-vae`) to "
                                 "decode latents into images")
    _add_model_args(s)
    s.add_argument("--num", type=count(1), default=16, help="images in the grid")
    s.add_argument("--classes", type=_class_ids, help="comma-separated class ids, e.g. 207,360,387 (default: "
                                                        "random)")
    s.add_argument("--steps", default=None,
                   help="ddpm/ddim: a respacing '250', 'ddim50', '10,15,20'; the fast solvers and SiT's samplers: a "
                        "step count (default 50 for grids, 250 with --num-samples)")
    s.add_argument("--sampler", default="",
                   help="ddpm, ddim, dpm++2m, dpm++3m, unipc (DDPM models); euler, heun, dopri5, sde-euler, sde-heun "
                        "(SiT models); default: ddpm, or heun for SiT")
    s.add_argument("--objective", choices=("ddpm", "sit"), default=None,
                   help="what the weights were trained with (converted SiT checkpoints: sit; default: a run's own, "
                        "else ddpm)")
    s.add_argument("--spacing", choices=("linspace", "leading", "trailing"), default="",
                   help="timestep spacing of the fast solvers (default linspace)")
    s.add_argument("--cfg-interval", type=_interval, default=None, metavar="LO,HI",
                   help="guide only at noise levels in [LO, HI] (1 = pure noise; default: every step)")
    s.add_argument("--eta", type=number(0), default=0.0, help="DDIM eta")
    s.add_argument("--cfg-scale", type=number(0), default=None,
                   help="guidance scale, applied only if > 1 (default 4.0 for grids, 1.5 with --num-samples)")
    s.add_argument("--num-samples", type=count(0), default=0,
                   help="evaluation run: this many samples into the ADM .npz given by --out (sharded over all "
                        "devices and hosts, resumable)")
    s.add_argument("--batch-per-device", type=count(1), default=32, help="with --num-samples")
    s.add_argument("--labels", choices=("random", "balanced"), default="random",
                   help="with --num-samples: uniform random labels (DiT's protocol, the default), or balanced: exactly "
                        "N / num_classes of each class, sample i of class i mod num_classes (RAE/REPA-E's protocol)")
    s.add_argument("--guide", default=None, metavar="WEIGHTS_OR_WORKDIR[:STEP]",
                   help="autoguidance (EDM2): guide with this weaker model of the same kind (a weights directory, or a "
                        "training run's EMA weights at its latest or a given checkpoint step): D = g + W (D_main - g) "
                        "with W = --cfg-scale, applied when W != 1, on every channel")
    s.add_argument("--cfg-mode", choices=("reference", "all"), default="reference",
                   help="reference: guide the first 3 channels (the reference's quirk); all: every eps channel")
    s.add_argument("--seed", type=count(0), default=0, help="noise and random labels (sample i depends on seed and i only)")
    s.add_argument("--upscale", type=count(1), default=4, help="nearest-neighbour upscale of the PNG")
    s.add_argument("--nrow", type=count(1), default=None, help="images per grid row (default: square)")
    s.add_argument("--out", type=output_file, default="samples/sample_grid.png",
                   help="the grid's image file (its extension picks the format), or the .npz with --num-samples")
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("convert", help="PyTorch/diffusers DiT checkpoints <-> dit-jax weights")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-torch", metavar="PT", type=existing_file,
                     help="official .pt (released state dict or train.py checkpoint)")
    src.add_argument("--from-diffusers", metavar="PATH", type=existing_path,
                     help="diffusers DiTTransformer2DModel folder or file")
    src.add_argument("--to-torch", metavar="WEIGHTS_DIR", type=existing_dir,
                     help="export dit-jax weights to an official .pt")
    src.add_argument("--from-diffusers-vae", metavar="PATH", type=existing_path,
                     help="sd-vae-ft-ema / sd-vae-ft-mse folder or diffusion_pytorch_model.safetensors/.bin")
    c.add_argument("--out", required=True, type=output_path,
                   help="output weights directory (or .pt file with --to-torch)")
    c.add_argument("--key", choices=("ema", "model"), default="ema", help="which weights of a train.py checkpoint")
    c.add_argument("--sample-size", type=count(1), help="latent size of diffusers weights (32 for 256 px)")
    c.add_argument("--force", action="store_true", help="replace an existing weights directory (or .pt file with "
                   "--to-torch); never a training run or a directory with other files")
    _add_model_args(c)
    c.set_defaults(func=cmd_convert)

    b = sub.add_parser("build-dataset", help="turn a class-per-subfolder image directory into a TFDS dataset")
    b.add_argument("src_dir", type=existing_dir, help="root/<class_name>/*.png|jpg|...")
    b.add_argument("--name", required=True, help="dataset name (snake_case)")
    b.add_argument("--data_dir", "--data-dir", dest="data_dir", default="", type=output_dir,
                   help="TFDS data dir (default ~/.cache/dit_jax/tfds or $DIT_JAX_DATA_DIR)")
    b.set_defaults(func=cmd_build_dataset)

    r = sub.add_parser("reference-batch", help="an ADM-layout reference batch (.npz) from a TFDS image dataset")
    r.add_argument("--dataset", required=True)
    r.add_argument("--data_dir", "--data-dir", dest="data_dir", default="", type=existing_dir)
    r.add_argument("--split", default="train")
    r.add_argument("--image-size", type=count(1), required=True, help="ADM center crop size (256 or 512)")
    r.add_argument("--inception", required=True, type=existing_file,
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    r.add_argument("--preprocess", choices=("pytorch_fid", "tf1"), default="pytorch_fid")
    r.add_argument("--num-images", type=count(1), default=10000, help="images kept as arr_0 (precision/recall)")
    r.add_argument("--max-images", type=count(0), default=0, help="statistics over at most this many (0: all)")
    r.add_argument("--batch-size", type=count(1), default=100)
    r.add_argument("--chunk", type=count(1), default=1000, help="images decoded at a time")
    r.add_argument("--seed", type=count(0), default=0)
    r.add_argument("--out", required=True, type=output_file)
    r.add_argument("--force", action="store_true", help="replace an existing reference batch at --out")
    r.set_defaults(func=cmd_reference_batch)

    x = sub.add_parser("extract-latents", help="encode a TFDS image dataset with the VAE into a latent dataset")
    x.add_argument("--dataset", required=True, help="TFDS image dataset (e.g. imagenet2012 or a build-dataset name)")
    x.add_argument("--data_dir", "--data-dir", dest="data_dir", default="", type=existing_dir)
    x.add_argument("--split", default="train")
    x.add_argument("--image-size", type=count(1), required=True, help="ADM center crop size (256 or 512)")
    x.add_argument("--vae", required=True, type=existing_dir,
                   help="VAE weights dir (`dit-jax convert --from-diffusers-vae`)")
    x.add_argument("--out-name", required=True, help="name of the latent dataset")
    x.add_argument("--out-data-dir", default="", type=output_dir, help="default: the input's data dir")
    x.add_argument("--batch-size", type=count(1), default=64)
    x.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    x.add_argument("--shard-size", type=count(1), default=1024, help="records per resumable shard")
    x.set_defaults(func=cmd_extract_latents)

    w = sub.add_parser("export-weights", help="a training run's weights as a weights directory (for sample "
                                              "--weights, init_weights, convert --to-torch)")
    w.add_argument("--workdir", required=True, type=existing_dir, help="the training run")
    w.add_argument("--out", required=True, type=output_dir, help="output weights directory")
    kind = w.add_mutually_exclusive_group()
    kind.add_argument("--ema", action="store_true", help="the EMA weights (the default; what the paper samples)")
    kind.add_argument("--raw", action="store_true", help="the raw (non-EMA) training weights")
    w.add_argument("--step", type=count(0), default=None, help="checkpoint step (default: the latest)")
    w.add_argument("--force", action="store_true", help="replace an existing weights directory (never a training run "
                   "or a directory with other files)")
    w.set_defaults(func=cmd_export_weights)

    m = sub.add_parser("models", help="parameter counts and forward MACs of the named models")
    m.add_argument("--input-size", type=count(1), help="latent side (32 = 256 px, 64 = 512 px)")
    m.set_defaults(func=cmd_models)

    # `train` is dispatched in main() before argparse; listed here for --help.
    sub.add_parser("train", help="train (default: the laptop demo); --config configs/dit.py:XL/2 --workdir DIR "
                                 "--config.batch_size=...")

    sub.add_parser("compile", help="will it fit? AOT-compile the train step for a TPU topology from this host: "
                   "--config configs/dit.py:XL/2 --topology v5p-8 [--num-slices N] (needs libtpu)")

    bm = sub.add_parser("benchmark", help="img/s, MFU, memory and compile time of a training config's train step, "
                                          "input pipeline and sampler per setting; --torch times the PyTorch "
                                          "reference beside them. --config FILE and --config.FIELD=VALUE as train "
                                          "(default: the paper's recipe for --model on a latent dataset)")
    _add_model_args(bm)
    bm.add_argument("--depth", type=count(1), help="override the named model's depth (small test models)")
    bm.add_argument("--hidden-size", type=count(1), help="override the named model's hidden size")
    bm.add_argument("--setting", action="append", default=[],
                    help="one benchmarked setting as key=value pairs over the defaults below, e.g. "
                         "'batch=256,remat=full' (repeatable; keys batch, dtype, attention, remat, scan)")
    bm.add_argument("--batch", type=count(1), default=None, help="default batch per device (default: the config's)")
    bm.add_argument("--dtype", default=None, help="default compute dtype (params stay float32; default: the "
                                                  "config's)")
    bm.add_argument("--attention", default=None, help="default attention: cudnn (XLA off GPUs) or xla")
    bm.add_argument("--remat", default=None, help="default remat policy: none, full, dots_saveable, "
                                                  "dots_with_no_batch_dims_saveable, offload_dots")
    bm.add_argument("--scan", action="store_true", help="default: scan over blocks")
    bm.add_argument("--steps", type=count(1), default=20, help="timed train steps per setting")
    bm.add_argument("--warmup", type=count(0), default=3, help="untimed train steps first")
    bm.add_argument("--no-pipeline", action="store_true", help="skip the input-pipeline rows")
    bm.add_argument("--dataset", default="", help="latent dataset for the pipeline rows (default: a synthetic one)")
    bm.add_argument("--data-dir", "--data_dir", dest="data_dir", default="", type=existing_dir)
    bm.add_argument("--workers", type=count(0), default=0, help="Grain worker processes of the pipeline rows")
    bm.add_argument("--sample-steps", type=count(0), default=250, help="sampling steps (0: no sampler rows)")
    bm.add_argument("--sampler", action="append", default=[], help="sampler of the sampler rows (repeatable; "
                                                                   "default: the objective's)")
    bm.add_argument("--cfg-scale", type=number(0), default=1.5, help="guidance scale of the sampler rows")
    bm.add_argument("--sample-batch", type=count(1), default=32)
    bm.add_argument("--sample-repeats", type=count(1), default=1, help="timed sampler runs after one warm-up run")
    bm.add_argument("--torch", action="store_true", help="also time the PyTorch reference (TF32, bf16 autocast, "
                                                         "bf16 + torch.compile; float32 only on CPU)")
    bm.add_argument("--interleave", type=count(0), default=0, metavar="N",
                    help="with --torch: also time N pairs (our repetition, then the reference's) of each "
                         "synthetic train row and of the DDPM sampler row, and give the median ratio and its "
                         "spread: robust to a shared machine's changing load (CPU; on one GPU both sides "
                         "would hold its memory at once)")
    bm.add_argument("--reference", default="", type=existing_dir,
                    help="with --torch: an official DiT checkout (default: "
                                                    "tests/torch_reference)")
    bm.add_argument("--out", default="", type=output_file, help="write the rows as JSON here")
    bm.set_defaults(func=cmd_benchmark)

    ph = sub.add_parser("phema", help="post-hoc EMA: reconstruct the weights of any EMA length (relative std) from "
                                      "the snapshots of a run trained with config.phema (EDM2)")
    ph.add_argument("--workdir", required=True, type=existing_dir, help="the training run (its phema/ snapshots)")
    ph.add_argument("--std", required=True, type=number(0, strict=True), help="relative standard deviation of the EMA profile, "
                                                              "in (0, 0.289), e.g. 0.05")
    ph.add_argument("--out", required=True, type=output_path, help="output weights directory (for sample --weights)")
    ph.add_argument("--step", type=count(1), default=None, help="reconstruct at this snapshot's step (default: the last)")
    ph.add_argument("--max-fit-error", type=number(0), default=0.1,
                    help="refuse a std whose reconstructed EMA response is further than this (relative L2) from the "
                         "exact one (default 0.1)")
    ph.add_argument("--force", action="store_true", help="replace an existing weights directory")
    ph.set_defaults(func=cmd_phema)

    e = sub.add_parser("evaluate", help="FID / sFID / IS / precision / recall as the ADM evaluator")
    e.add_argument("reference", type=existing_file, help="ADM reference batch .npz (arr_0, mu, sigma, mu_s, sigma_s)")
    e.add_argument("samples", type=existing_file, help="sample batch .npz (arr_0: uint8 N x H x W x 3)")
    e.add_argument("--inception", required=True, type=existing_file,
                   help="pytorch-fid weights pt_inception-2015-12-05-6726825d.pth (or its .npz export)")
    e.add_argument("--preprocess", choices=("pytorch_fid", "tf1"), default="pytorch_fid",
                   help="resize/scale as pytorch-fid (default) or as the TF1 graph of the ADM evaluator")
    e.add_argument("--batch-size", type=count(1), default=100)
    e.add_argument("--min-reference-images", type=count(1), default=10000)
    e.add_argument("--out", type=output_file, help="metrics JSON (default: beside the samples)")
    e.set_defaults(func=cmd_evaluate)
    return parser


def flags_error():
    from absl.flags import Error
    return Error


def prepare_process() -> None:
    """What a `dit-jax` process sets before jax starts a backend."""
    from dit_jax import host_memory, platforms
    platforms.choose()  # no libtpu noise where there is no TPU
    host_memory.keep_freed_memory()  # CPU alone: the step's freed buffers stay in one heap (its docstring)


def main(argv=None) -> int:
    from dit_jax.exit_codes import RunStopped
    prepare_process()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:
        print(version())
        return 0
    try:
        if argv[:1] == ["train"]:  # absl parses the rest: --config=FILE:ARG and typed --config.x=y overrides
            return cmd_train(argv[1:])
        if argv[:1] == ["benchmark"]:  # its flags, then --config=FILE and --config.x=y as train
            args, rest = build_parser().parse_known_args(argv)
            return cmd_benchmark(args, rest)
        if argv[:1] == ["compile"]:  # --config as train, plus the target topology
            from dit_jax.jobs.compile import main as cmd_compile
            return cmd_compile(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ValueError, KeyError, ImportError, flags_error()) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except RunStopped as e:  # e.g. sample's shards changed under it: one line, and rerun (1) resumes
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a path that cannot be used is bad input; a dropped connection is not
        from dit_jax.exit_codes import permanent_os_error
        line = permanent_os_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
