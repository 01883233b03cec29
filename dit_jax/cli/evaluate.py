"""`dit-jax evaluate`: FID / sFID / IS / precision / recall of a sample batch, as the ADM evaluator."""

from __future__ import annotations

from dit_jax.argparsing import count, existing_file, output_file

NAME = "evaluate"
HELP = "FID / sFID / IS / precision / recall as the ADM evaluator, and EDM2's FD_DINOv2"


def add_arguments(e) -> None:
    e.add_argument("reference", type=existing_file, help="ADM reference batch .npz (arr_0, mu, sigma, mu_s, sigma_s)")
    e.add_argument("samples", type=existing_file, help="sample batch .npz (arr_0: uint8 N x H x W x 3)")
    e.add_argument("--inception", default=None, type=existing_file,
                   help="for fid: pytorch-fid weights pt_inception-2015-12-05-6726825d.pth (or its .npz export)")
    e.add_argument("--metrics", default="fid", help="comma-separated: fid (FID, sFID, IS, precision, recall as "
                   "the ADM evaluator), fd_dinov2 (EDM2's FD_DINOv2); default fid")
    e.add_argument("--dinov2", default="", help="for fd_dinov2: dinov2_vitl14_pretrain.pth (or its folder)")
    e.add_argument("--dinov2-resize", choices=("torch", "pil"), default="torch",
                   help="fd_dinov2's resize to 224 as EDM2's resize_mode (default torch)")
    e.add_argument("--preprocess", choices=("pytorch_fid", "tf1"), default="pytorch_fid",
                   help="resize/scale as pytorch-fid (default) or as the TF1 graph of the ADM evaluator")
    e.add_argument("--batch-size", type=count(1), default=100)
    e.add_argument("--min-reference-images", type=count(1), default=10000)
    e.add_argument("--out", type=output_file, help="metrics JSON (default: beside the samples)")


def run(args) -> int:
    from dit_jax.jobs.evaluate_npz import evaluate
    out = evaluate(args.reference, args.samples, args.inception, args.out, preprocess=args.preprocess,
                   batch_size=args.batch_size, min_reference_images=args.min_reference_images,
                   metrics=args.metrics, dinov2=args.dinov2, dinov2_resize=args.dinov2_resize)
    print(f"wrote {out}")
    return 0
