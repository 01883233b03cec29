"""`dit-jax convert`: PyTorch/diffusers DiT checkpoints <-> dit-jax weights."""

from __future__ import annotations

from dit_jax.argparsing import count, existing_dir, existing_file, existing_path, output_path
from dit_jax.cli.common import add_model_args, check_file_out, model_config

NAME = "convert"
HELP = "PyTorch/diffusers DiT checkpoints <-> dit-jax weights"


def add_arguments(c) -> None:
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-torch", metavar="PT", type=existing_file,
                     help="official .pt (released state dict or train.py checkpoint)")
    src.add_argument("--from-meanflow", metavar="CKPT_DIR", type=existing_dir,
                     help="official MeanFlow (Gsunshine/meanflow) Flax checkpoint directory (EMA; --key model: raw)")
    src.add_argument("--from-lightningdit", metavar="PT", type=existing_file,
                     help="hustvl/LightningDiT .pt (released state dict or train.py checkpoint); its options are "
                          "read off the names")
    src.add_argument("--from-repa-torch", metavar="PT", type=existing_file,
                     help="REPA train.py checkpoint (its --key weights, projectors kept for resuming; sample with "
                          "--objective repa)")
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
    add_model_args(c)


def run(args) -> int:
    from dit_jax.jobs import convert
    config = model_config(args)
    if args.to_torch:
        check_file_out(args.out, args.force, "a PyTorch state dict (.pt)")
        name = convert.weights_to_torch(args.to_torch, args.out, config)
        print(f"wrote PyTorch state dict of {name} to {args.out}")
        return 0
    if args.from_diffusers_vae:
        path = convert.vae_from_diffusers(args.from_diffusers_vae, args.out, args.force)
        print(f"wrote Stable Diffusion VAE weights to {path}")
        return 0
    for line in convert.dit_from_torch(args.out, config, torch_file=args.from_torch, key=args.key,
                                       repa_file=args.from_repa_torch, lightningdit_file=args.from_lightningdit,
                                       meanflow_dir=args.from_meanflow,
                                       diffusers=args.from_diffusers, sample_size=args.sample_size,
                                       num_heads=args.num_heads, force=args.force):
        print(line)
    return 0
