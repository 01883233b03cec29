"""A cheap look at a prepared dataset before training: can its metadata and its records be read?

A truncated ArrayRecord file opens fine and fails only at the first read (in a data-loader worker,
as a traceback), and damaged metadata reads as "dataset not found"; both are named here with the
directory to delete and rebuild.
"""

from __future__ import annotations

from dit_jax import storage
from dit_jax.data.digits import default_data_dir

REBUILD = ("the demo's digits are rebuilt on the next run; an image folder with `dit-jax build-dataset`, "
           "a latent dataset with `dit-jax extract-latents`")


def built_versions(name: str, data_dir: str) -> list[str]:
    return sorted(str(p.parent) for p in storage.resolve(data_dir).joinpath(name).glob("*/dataset_info.json"))


def _damaged(name: str, directory: str, error: Exception) -> ValueError:
    first = (str(error).splitlines() or [""])[0][:300]
    return ValueError(f"dataset {name!r} in {directory} is damaged ({type(error).__name__}: {first}): delete "
                      f"{directory} and build it again ({REBUILD})")


def check_dataset(name: str, data_dir: str, split: str = "train") -> int:
    """Open the dataset as training will and read its first and last records; a clear error if that fails.
    Returns the number of records."""
    from dit_jax.data.pipeline import DatasetNotFoundError, open_source
    data_dir = str(storage.resolve(data_dir or default_data_dir()))
    try:
        source = open_source(name, data_dir, split)
    except DatasetNotFoundError as e:
        built = built_versions(name, data_dir)
        if built:  # its files are there, so it is not missing: its metadata cannot be read
            raise _damaged(name, built[-1], e.__cause__ or e) from None
        raise
    if len(source) == 0:
        raise ValueError(f"dataset {name!r} in {data_dir} has no records in split {split!r}")
    try:
        source[0], source[len(source) - 1]  # a truncated file fails here, at its end
    except Exception as e:  # noqa: BLE001 -- any read failure means the files are damaged
        built = built_versions(name, data_dir)
        raise _damaged(name, built[-1] if built else storage.join(data_dir, name), e) from None
    return len(source)
