#!/usr/bin/env python
"""Compare dit-jax with the official PyTorch DiT, side by side, on the same weights and noise.

    git clone https://github.com/facebookresearch/DiT /path/to/DiT   # needs timm installed too
    python tools/compare_torch.py --reference /path/to/DiT                        # random DiT-S/2
    python tools/compare_torch.py --reference /path/to/DiT --model DiT-XL/2 \\
        --checkpoint DiT-XL-2-256x256.pt                                           # released weights
    python tools/compare_torch.py --reference /path/to/DiT --train 5              # 5 training steps

Imports the reference's `models.py` and `diffusion` package from --reference, builds both models
with the same weights (random, with the zero-initialised layers randomised, or a given .pt),
and prints max absolute / relative differences for the forward, the guided forward, the training
loss terms for fixed (x0, t, noise) (t = 0 with typical and extreme pixels too) and N respaced
sampling steps with identical noise. With --train N it instead runs N steps of the reference's
training update (train.py: loss mean, AdamW lr 1e-4, EMA 0.9999) beside our jitted train_step
on the same batches, timesteps, noise and label-drop masks, and prints the per-step losses and
the final params / EMA differences. Exits 1 if any row is past its tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def import_reference(path: str):
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "models.py")) or not os.path.isdir(os.path.join(path, "diffusion")):
        raise SystemExit(f"error: {path} has no models.py and diffusion/: pass the root of a DiT checkout")
    sys.path.insert(0, path)
    try:
        models = importlib.import_module("models")
        diffusion = importlib.import_module("diffusion")
    except ImportError as e:
        raise SystemExit(f"error: importing the reference failed ({e}); the official models.py needs "
                         "`pip install timm`") from None
    return models, diffusion


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="root of a facebookresearch/DiT checkout")
    ap.add_argument("--model", default="DiT-S/2")
    ap.add_argument("--input-size", type=int, default=None, help="latent size (default 32, or the checkpoint's)")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--checkpoint", help="official .pt (released state dict or train.py checkpoint)")
    ap.add_argument("--key", default="ema", choices=("ema", "model"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="sampling steps to run on both sides")
    ap.add_argument("--respacing", default="250")
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-5, help="relative tolerance of the forward rows")
    ap.add_argument("--train", type=int, default=0, metavar="N",
                    help="compare N training steps (loss, params, EMA) instead of the forward/sampling rows")
    args = ap.parse_args(argv)

    import jax
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32/bf16 passes on GPUs
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.dit import dit_config
    from dit_jax.models.params import config_name
    from dit_jax.parity import format_table, run_comparison, run_training_comparison

    models, diffusion = import_reference(args.reference)
    state_dict = None
    overrides = {"num_classes": args.num_classes}
    if args.input_size:
        overrides["input_size"] = args.input_size
    config = dit_config(args.model, **overrides)
    if args.checkpoint:
        state_dict = torch_io.load_state_dict(args.checkpoint, args.key)
        if not args.input_size and "pos_embed" in state_dict:
            grid = int(round(state_dict["pos_embed"].shape[1] ** 0.5))
            config = dit_config(args.model, input_size=grid * config.patch_size, num_classes=args.num_classes)
        config = dit_torch.infer_config(state_dict, config)
    print(f"comparing {config_name(config)} (input {config.input_size}, {config.num_classes} classes) "
          f"with the reference at {args.reference}")
    if args.train < 0:
        print("error: --train needs a number of steps >= 1", file=sys.stderr)
        return 2
    if args.train:
        rows = run_training_comparison(models, diffusion, config, steps=args.train, state_dict=state_dict,
                                       batch=args.batch, seed=args.seed, log=print)
    else:
        rows = run_comparison(models, diffusion, config, state_dict=state_dict, batch=args.batch,
                              sample_steps=args.steps, respacing=args.respacing, cfg_scale=args.cfg_scale,
                              seed=args.seed, tol=args.tol, log=print)
    print(format_table(rows))
    failed = [r.name for r in rows if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("all rows within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
