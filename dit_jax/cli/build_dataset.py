"""`dit-jax build-dataset`: a class-per-subfolder image directory -> a TFDS ArrayRecord dataset."""

from __future__ import annotations

from dit_jax.argparsing import existing_dir, output_dir

NAME = "build-dataset"
HELP = "turn a class-per-subfolder image directory into a TFDS dataset"


def add_arguments(b) -> None:
    b.add_argument("src_dir", type=existing_dir, help="root/<class_name>/*.png|jpg|...")
    b.add_argument("--name", required=True, help="dataset name (snake_case)")
    b.add_argument("--data_dir", "--data-dir", dest="data_dir", default="", type=output_dir,
                   help="TFDS data dir (default ~/.cache/dit_jax/tfds or $DIT_JAX_DATA_DIR)")


def run(args) -> int:
    from dit_jax import storage
    from dit_jax.data.digits import default_data_dir
    from dit_jax.data.image_folder import build_image_folder
    data_dir = args.data_dir or default_data_dir()
    storage.require_local(data_dir, "--data-dir")
    path = build_image_folder(args.src_dir, data_dir, args.name)
    print(f"dataset {args.name!r} in {path}; train on it with --config.data.name={args.name} "
          f"--config.data.data_dir={data_dir}")
    return 0
