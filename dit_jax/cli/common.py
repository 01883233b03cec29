"""Arguments and checks that several commands share (model size flags, class ids, output files)."""

from __future__ import annotations

import argparse
import os

from dit_jax.argparsing import count

DEMO_MODEL = dict(input_size=32, patch_size=4, in_channels=3, hidden_size=192, depth=4, num_heads=3,
                  num_classes=10)


def add_model_args(p) -> None:
    p.add_argument("--model", help="named model, e.g. DiT-XL/2 (checked against the checkpoint)")
    p.add_argument("--input-size", type=count(1), help="latent/image side (32 for 256 px latents, 64 for 512 px)")
    p.add_argument("--num-classes", help="classes of the model (named models: 1000)", type=count(1))
    p.add_argument("--in-channels", type=count(1), help="input channels (4 for SD-VAE latents, 3 for RGB pixels)")
    p.add_argument("--num-heads", type=count(1), help="needed only for custom (non-named) checkpoints")


def model_config(args, default=None):
    """The named model (--model) with the size overrides given, else `default` with them, else None."""
    from dit_jax.models.dit import DiTConfig, dit_config
    overrides = {k: v for k, v in dict(input_size=args.input_size, num_classes=args.num_classes,
                                       in_channels=args.in_channels, num_heads=args.num_heads).items()
                 if v is not None}
    if args.model:
        return dit_config(args.model, **overrides)
    return None if default is None else DiTConfig(**{**default, **overrides})


def class_ids(text: str) -> list[int]:
    """--classes: '1,2,3' -> [1, 2, 3]."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of class ids (integers >= 0), "
                                         "e.g. 207,360,387")
    return [int(p) for p in parts]


def interval(text: str) -> tuple[float, float]:
    """--cfg-interval LO,HI: two noise levels in [0, 1]."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers, e.g. 0,0.7), got {text!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 <= LO <= HI <= 1, got {text!r}")
    return lo, hi


def check_file_out(path: str, force: bool, what: str) -> None:
    """An output file may replace only a file, and only with --force."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"--out {path} is a directory; the output is a file ({what}): name a file")
    if os.path.exists(path) and not force:
        raise FileExistsError(f"--out {path} exists; choose a new path or pass --force to replace it")
