"""`dit-jax benchmark`: img/s, MFU, memory and compile time of a training config's train step, input
pipeline and sampler per setting, beside the PyTorch reference (--torch)."""

from __future__ import annotations

from dit_jax.argparsing import count, existing_dir, number, output_file
from dit_jax.cli.common import add_model_args

NAME = "benchmark"
HELP = ("img/s, MFU, memory and compile time of a training config's train step, input pipeline and sampler per "
        "setting; --torch times the PyTorch reference beside them. --config FILE and --config.FIELD=VALUE as train "
        "(default: the paper's recipe for --model on a latent dataset)")
CONFIG = "dit.py:XL/2"


def add_arguments(bm) -> None:
    add_model_args(bm)
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
                    help="with --torch: an official DiT checkout (default: tests/torch_reference)")
    bm.add_argument("--out", default="", type=output_file, help="write the rows as JSON here")


def config_and_settings(args):
    """(training config, settings) that the parsed `args` describe (tools/bench_torch.py takes the same)."""
    from dit_jax.benchmark.suite import config_and_settings as settings_of
    from dit_jax.cli import config_args
    config = config_args.load(args, CONFIG, "dit-jax benchmark")
    if not config_args.given(args):
        config.data.latents = "dataset"  # the step alone, as the reference's rows time it
    return settings_of(args, config)


def run(args) -> int:
    """Without --config: the paper's recipe for --model on a latent dataset."""
    from dit_jax.benchmark.suite import run_benchmark, torch_reference
    config, settings = config_and_settings(args)
    if args.interleave and not args.torch:
        raise ValueError("--interleave pairs our repetitions with the reference's: add --torch")
    reference = torch_reference(args.reference) if args.torch else ""
    run_benchmark(config, settings, steps=args.steps, warmup=args.warmup, pipeline=not args.no_pipeline,
                  data_dir=args.data_dir, dataset=args.dataset, worker_count=args.workers,
                  sample_steps=args.sample_steps, cfg_scale=args.cfg_scale, sample_batch=args.sample_batch,
                  sample_repeats=args.sample_repeats, samplers=tuple(args.sampler or [""]),
                  torch_reference=reference, interleave=args.interleave if args.torch else 0, out=args.out)
    return 0
