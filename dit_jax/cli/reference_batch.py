"""`dit-jax reference-batch`: an ADM-layout reference batch (.npz) from a TFDS image dataset."""

from __future__ import annotations

import os

from dit_jax.argparsing import count, existing_dir, existing_file, output_file
from dit_jax.cli.common import check_file_out

NAME = "reference-batch"
HELP = "an ADM-layout reference batch (.npz) from a TFDS image dataset"


def add_arguments(r) -> None:
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


def run(args) -> int:
    """Inception statistics of all images (ADM center crop to --image-size), and `--num-images` of
    them (shuffled by --seed) as arr_0."""
    from dit_jax.jobs.reference_batch import reference_batch, replace_problem
    check_file_out(args.out, args.force, "an ADM reference batch .npz")
    problem = replace_problem(args.out) if os.path.exists(args.out) else None
    if problem:
        raise FileExistsError(problem)
    n, kept = reference_batch(args.dataset, args.data_dir, args.split, args.image_size, args.inception, args.out,
                              preprocess=args.preprocess, num_images=args.num_images, max_images=args.max_images,
                              batch_size=args.batch_size, chunk=args.chunk, seed=args.seed)
    print(f"wrote {args.out}: statistics of {n} images, {kept} images as arr_0")
    return 0
