"""`dit-jax sample`: a class-conditional image grid, or with --num-samples N the ADM .npz of N samples."""

from __future__ import annotations

import os

from dit_jax.argparsing import count, existing_dir, number, output_file
from dit_jax.cli.common import DEMO_MODEL, add_model_args, class_ids, interval, model_config
from dit_jax.cli.distributed_args import add_distributed_arguments, join_if_asked, multi_host

NAME = "sample"
HELP = ("a class-conditional sample grid (PNG, JPEG, ...), or with --num-samples N the ADM .npz of N samples "
        "(the evaluation protocol)")
# What a Ctrl-C means here: the .npz's shards are kept (the main error mapping says it).
INTERRUPTED = "interrupted; the shards written so far are kept: rerun the same command to resume"


def add_arguments(s) -> None:
    s.add_argument("--weights", "--checkpoint", dest="weights", type=existing_dir,
                   help="weights directory written by `dit-jax convert` (default: random init)")
    s.add_argument("--workdir", type=existing_dir,
                   help="a training run: sample from its latest checkpoint's EMA weights")
    s.add_argument("--vae", type=existing_dir,
                   help="Stable Diffusion VAE weights dir (`dit-jax convert --from-diffusers-vae`) to "
                        "decode latents into images")
    add_model_args(s)
    s.add_argument("--num", type=count(1), default=16, help="images in the grid")
    s.add_argument("--classes", type=class_ids, help="comma-separated class ids, e.g. 207,360,387 (default: "
                                                     "random)")
    s.add_argument("--steps", default=None,
                   help="ddpm/ddim: a respacing '250', 'ddim50', '10,15,20'; the fast solvers and SiT's samplers: a "
                        "step count (default 50 for grids, 250 with --num-samples)")
    s.add_argument("--sampler", default="",
                   help="ddpm, ddim, dpm++2m, dpm++3m, unipc (DDPM models); euler, heun, dopri5, sde-euler, sde-heun "
                        "(SiT models); repa-sde, repa-euler, repa-heun (REPA models); meanflow (MeanFlow models, "
                        "--steps = NFE); default: ddpm, heun for SiT, repa-sde for REPA, meanflow for MeanFlow")
    s.add_argument("--objective", choices=("ddpm", "sit", "repa", "meanflow"), default=None,
                   help="what the weights were trained with (converted SiT checkpoints: sit; REPA's: repa; default: a "
                        "run's own, else ddpm)")
    s.add_argument("--spacing", choices=("linspace", "leading", "trailing"), default="",
                   help="timestep spacing of the fast solvers (default linspace)")
    s.add_argument("--labels", choices=("random", "balanced"), default="random",
                   help="with --num-samples: uniform random labels (DiT's protocol, the default), or balanced: exactly "
                        "N / num_classes of each class, sample i of class i mod num_classes (RAE/REPA-E's protocol)")
    s.add_argument("--guide", default=None, metavar="WEIGHTS_OR_WORKDIR[:STEP]",
                   help="autoguidance (EDM2): guide with this weaker model of the same kind (a weights directory, or a "
                        "training run's EMA weights at its latest or a given checkpoint step): D = g + W (D_main - g) "
                        "with W = --cfg-scale, applied when W != 1, on every channel")
    s.add_argument("--timestep-shift", type=number(0.0), default=0.0, metavar="S",
                   help="LightningDiT's shift of SiT's euler/heun ODE grid, t -> S t / (1 + (S - 1) t) (0: off)")
    s.add_argument("--cfg-interval", type=interval, default=None, metavar="LO,HI",
                   help="guide only at noise levels in [LO, HI] (1 = pure noise; default: every step)")
    s.add_argument("--eta", type=number(0), default=0.0, help="DDIM eta")
    s.add_argument("--cfg-scale", type=number(0), default=None,
                   help="guidance scale, applied only if > 1 (default 4.0 for grids, 1.5 with --num-samples)")
    s.add_argument("--num-samples", type=count(0), default=0,
                   help="evaluation run: this many samples into the ADM .npz given by --out (sharded over all "
                        "devices and hosts, resumable)")
    s.add_argument("--batch-per-device", type=count(1), default=32, help="with --num-samples")
    s.add_argument("--cfg-mode", choices=("reference", "all"), default="reference",
                   help="reference: guide the first 3 channels (the reference's quirk); all: every eps channel")
    s.add_argument("--seed", type=count(0), default=0, help="noise and random labels (sample i depends on seed and i only)")
    s.add_argument("--upscale", type=count(1), default=4, help="nearest-neighbour upscale of the PNG")
    s.add_argument("--nrow", type=count(1), default=None, help="images per grid row (default: square)")
    s.add_argument("--out", type=output_file, default="samples/sample_grid.png",
                   help="the grid's image file (its extension picks the format; default: samples/sample_grid.png "
                        "in the current directory), or the .npz with --num-samples")
    # With --num-samples, every host samples its share of each batch and writes its own shards: run the same
    # command on every host with these (as `dit-jax train`).
    add_distributed_arguments(s)


def interrupted_message(args) -> str | None:
    """The one line a Ctrl-C gets (see dit_jax.cli.main): an .npz run resumes, a grid starts over."""
    return INTERRUPTED if args.num_samples else None


def run(args) -> int:
    """A class-conditional PNG grid, or with --num-samples the ADM .npz of the evaluation protocol."""
    from dit_jax.jobs.sample import sample
    from dit_jax.sampling.run_sampler import SamplerSettings
    check_args(args)
    join_if_asked(args)   # before anything starts a backend
    # A run's checkpoint names its own model; converted weights are checked against --model when given.
    config = None if args.workdir else model_config(args, default=None if args.weights else DEMO_MODEL)
    settings = SamplerSettings(sampler=args.sampler, steps=args.steps, cfg_scale=args.cfg_scale, cfg_mode=args.cfg_mode,
                               eta=args.eta, cfg_interval=args.cfg_interval, spacing=args.spacing,
                               timestep_shift=args.timestep_shift)
    sample(args.out, weights=args.weights, workdir=args.workdir, config=config, vae=args.vae, num=args.num,
           classes=args.classes, num_samples=args.num_samples, settings=settings, objective=args.objective,
           seed=args.seed, batch_per_device=args.batch_per_device, nrow=args.nrow, upscale=args.upscale,
           labels=args.labels, guide=args.guide)
    return 0


def check_args(args) -> None:
    """What would otherwise fail only after loading the model or sampling (or divide by zero while
    drawing the grid)."""
    from PIL import Image
    if args.num_samples < 0:
        raise ValueError(f"--num-samples must be >= 1 (or 0 for a grid), got {args.num_samples}")
    if args.weights and args.workdir:
        raise ValueError("give --weights or --workdir, not both")
    if multi_host(args) and not args.num_samples:
        raise ValueError("--distributed/--coordinator: several hosts sample --num-samples N into one .npz; a grid "
                         "is drawn on one host (drop the multi-host flags)")
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
