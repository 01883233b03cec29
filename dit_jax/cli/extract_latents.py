"""`dit-jax extract-latents`: a TFDS image dataset -> a latent dataset of VAE posterior mean/std."""

from __future__ import annotations

from dit_jax.argparsing import count, existing_dir, output_dir

NAME = "extract-latents"
HELP = "encode a TFDS image dataset with the VAE into a latent dataset"


def add_arguments(x) -> None:
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
    x.add_argument("--with-images", "--with_images", dest="with_images", action="store_true",
                   help="also store each cropped uint8 image (REPA's encoders read it; docs/repa.md)")


def run(args) -> int:
    """The latents of each image and of its flip (mean and std of the posterior)."""
    from dit_jax.jobs.extract_latents import extract_latents
    path = extract_latents(args.dataset, args.data_dir, args.image_size, args.vae, args.out_name,
                           out_data_dir=args.out_data_dir, split=args.split, batch_size=args.batch_size,
                           dtype=args.dtype, shard_size=args.shard_size, with_images=args.with_images)
    print(f"train on it with --config.data.latents=dataset --config.data.name={args.out_name} "
          f"--config.data.data_dir={path}")
    return 0
