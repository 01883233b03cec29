"""A class-per-subfolder image directory (root/<class>/*.jpg ...) as a TFDS ArrayRecord dataset.

The layout is torchvision's ImageFolder, which the reference trains ImageNet from. Labels are the
sorted class folders' indices, and the class names are kept as the label feature's names. Images
are stored encoded (JPEG/PNG bytes as found, other formats re-encoded to PNG) and decoded by the
pipeline with PIL, so neither building nor reading needs TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import shutil
import tempfile

import tensorflow_datasets as tfds
from PIL import Image

VERSION = "1.0.0"
# torchvision's IMG_EXTENSIONS, what the reference's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "SRC_DIR/<class_name>/<image>.{jpg,jpeg,png,webp,...}, one subfolder per class"
SKIPPED_FILE = "skipped_files.txt"
_CHUNK = 256  # Images checked per thread-pool round: bounds the encoded bytes held in memory.


def scan_image_folder(src_dir: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names sorted, [(relative path, label)]) of an image-folder tree; files walked recursively."""
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"image folder {src_dir!r} does not exist or is not a directory; expected {LAYOUT}")
    classes = sorted(d for d in os.listdir(src_dir)
                     if not d.startswith(".") and os.path.isdir(os.path.join(src_dir, d)))
    files = []
    for label, name in enumerate(classes):
        for root, dirs, names in os.walk(os.path.join(src_dir, name), followlinks=True):
            dirs.sort()
            files += [(os.path.relpath(os.path.join(root, f), src_dir), label) for f in sorted(names)
                      if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    if not files:
        found = f"class folders {classes[:5]} but no image files" if classes else "no class subfolders"
        raise ValueError(f"image folder {src_dir!r} has {found}; expected {LAYOUT}")
    return classes, files


def read_encoded(path: str) -> bytes | None:
    """The image's bytes to store, or None when PIL cannot fully decode it (corrupt or truncated)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # A full decode: `Image.open` alone reads only the header.
            if image.format in ("JPEG", "PNG") and image.mode in ("L", "RGB", "RGBA", "P"):
                return data
            # Other formats (WebP, TIFF, ...) and modes (CMYK, 16-bit) are re-encoded losslessly as RGB PNG,
            # so a TFDS reader with TensorFlow can decode every record too.
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
            return out.getvalue()
    except Exception:  # noqa: BLE001 -- any decoder failure means: skip this file and count it.
        return None


class _ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the per-dataset builders made by `build_image_folder` (name, source and classes set there)."""

    VERSION = tfds.core.Version(VERSION)
    # As in digits.py: TFDS's checksums lookup needs the missing `importlib_resources` backport.
    code_path = None
    src_dir: str = ""
    class_names: list[str] = []

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.skipped: list[str] = []

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=f"Image folder {self.src_dir} ({len(self.class_names)} classes).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=self.class_names),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        _, files = scan_image_folder(self.src_dir)
        # PIL decodes without the GIL, so threads check the images in parallel.
        with concurrent.futures.ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4)) as pool:
            for start in range(0, len(files), _CHUNK):
                chunk = files[start: start + _CHUNK]
                datas = pool.map(read_encoded, [os.path.join(self.src_dir, p) for p, _ in chunk])
                for (path, label), data in zip(chunk, datas):
                    if data is None:
                        self.skipped.append(path)
                        continue
                    yield path, {"image": data, "label": label, "file_name": path}


def _builder_class(name: str, src_dir: str, class_names: list[str]) -> type:
    return type(f"ImageFolder_{name}", (_ImageFolderBuilder,),
                {"name": name, "src_dir": src_dir, "class_names": class_names}, skip_registration=True)


def check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
        raise ValueError(f"dataset name {name!r}: use lower case letters, digits and '_' (TFDS names are snake_case)")
    if name in tfds.list_builders(with_community_datasets=False):
        raise ValueError(f"dataset name {name!r} is a TFDS catalog dataset; TFDS would read it with that "
                         "dataset's code, not as this image folder: choose another name")


def folder_name_for(name: str) -> str:
    """A name `build_image_folder` accepts for an image-folder copy of dataset `name` ('mnist' -> 'mnist_folder')."""
    try:
        check_name(name)
        return name
    except ValueError:
        return re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_") + "_folder"


def build_image_folder(src_dir: str, data_dir: str, name: str, *, log=print) -> str:
    """Builds `data_dir/name/1.0.0` from the image folder `src_dir` ('train' split); returns data_dir.

    Unreadable images are skipped; their count and first paths are reported through `log` and all of
    them listed in `skipped_files.txt` beside the dataset. An existing build is kept (delete its
    directory to rebuild). Built in a temporary directory and renamed into place, so an interrupted
    build leaves nothing half-written behind.
    """
    check_name(name)
    src_dir = os.path.abspath(os.path.expanduser(src_dir))
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    target = os.path.join(data_dir, name, VERSION)
    if os.path.exists(os.path.join(target, "dataset_info.json")):
        log(f"dataset {name!r} already built at {target}; delete that directory to rebuild it")
        return data_dir
    if os.path.exists(target):  # the final rename would fail after the whole build
        raise FileExistsError(f"{target} exists but holds no finished dataset (no dataset_info.json): move it away "
                              "or choose another --name; it is never deleted here")
    class_names, files = scan_image_folder(src_dir)
    made = [d for d in (data_dir, os.path.join(data_dir, name)) if not os.path.isdir(d)]
    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-build-", dir=data_dir)
    try:
        builder = _builder_class(name, src_dir, class_names)(
            data_dir=tmp, file_format=tfds.core.FileFormat.ARRAY_RECORD)
        try:
            builder.download_and_prepare(download_dir=os.path.join(tmp, "downloads"))
        except Exception:
            # TFDS stops with "No examples were yielded" when every image was skipped: say why instead.
            if len(builder.skipped) != len(files):
                raise
        skipped = builder.skipped
        if len(skipped) == len(files):
            raise ValueError(f"none of the {len(files)} image files in {src_dir!r} could be decoded "
                             f"(first: {skipped[:3]}); expected {LAYOUT}")
        built = os.path.join(tmp, name, VERSION)
        with open(os.path.join(built, SKIPPED_FILE), "w") as f:
            f.writelines(p + "\n" for p in skipped)
        os.makedirs(os.path.join(data_dir, name), exist_ok=True)
        os.rename(built, target)
        made = []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(made):  # a failed build leaves no empty directories it created behind
            if os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)
    log(f"built {name!r}: {len(files) - len(skipped)} images in {len(class_names)} classes from {src_dir} "
        f"into {target}")
    if skipped:
        first = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log(f"skipped {len(skipped)} unreadable image file(s) (all listed in {target}/{SKIPPED_FILE}): {first}")
    return data_dir
