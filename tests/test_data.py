"""The input pipeline: digits and image-folder TFDS builds, ADM preprocessing, the Grain loader, to_global."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import grain
from dit_jax.data import digits, image_folder, pipeline, preprocess

DIGITS_CFG = dict(name="digits", data_dir="", split="train", image_size=8, channels=1, num_classes=10,
                  random_flip=True, worker_count=0, worker_buffer_size=2)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    return digits.ensure_digits(str(tmp_path_factory.mktemp("tfds")))


def digits_cfg(data_dir, **overrides):
    return {**DIGITS_CFG, "data_dir": data_dir, **overrides}


class ConstSource:
    """Record i is a constant image of value i, so a loaded image names its record."""

    def __init__(self, n, labels=None):
        self.n, self.labels = n, labels if labels is not None else [i % 10 for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full((4, 4, 1), i, np.uint8), "label": self.labels[i]}

    def __repr__(self):
        return f"ConstSource({self.n})"


CONST_CFG = dict(DIGITS_CFG, image_size=4)


def record_ids(batch):
    """The record index of every image of a ConstSource batch (images are constant, so flips keep it)."""
    values = batch["image"].astype(int)
    assert (values == values[:, :1, :1, :1]).all()
    return values[:, 0, 0, 0].tolist()


def take(loader, n):
    it = iter(loader)
    try:
        return [next(it) for _ in range(n)]
    finally:
        pipeline.close(it)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


# --- digits --------------------------------------------------------------------------------------------------

def test_digits_build_matches_sklearn(digits_dir):
    from sklearn.datasets import load_digits
    ref = load_digits()
    source = pipeline.open_source("digits", digits_dir, "train")
    assert len(source) == 1797
    images = np.stack([source[i]["image"] for i in range(len(source))])
    labels = np.array([source[i]["label"] for i in range(len(source))])
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8, 1)
    np.testing.assert_array_equal(images, np.round(ref.images * (255 / 16)).astype(np.uint8)[..., None])
    np.testing.assert_array_equal(labels, ref.target)
    # Idempotent: a second call does not rebuild.
    record = os.path.join(digits_dir, "digits", "1.0.0", "digits-train.array_record-00000-of-00001")
    mtime = os.stat(record).st_mtime_ns
    assert digits.ensure_digits(digits_dir) == digits_dir
    assert os.stat(record).st_mtime_ns == mtime


def test_digits_default_dir_and_concurrent_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("DIT_JAX_DATA_DIR", str(tmp_path / "env"))
    assert digits.default_data_dir() == str(tmp_path / "env")
    monkeypatch.delenv("DIT_JAX_DATA_DIR")
    assert digits.default_data_dir() == os.path.expanduser("~/.cache/dit_jax/tfds")
    # Two processes building into the same empty data_dir at once both succeed and leave one dataset.
    target = str(tmp_path / "shared")
    code = f"from dit_jax.data.digits import ensure_digits; ensure_digits({target!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    assert sorted(os.listdir(target)) == ["digits"]  # The temporary build directories are gone.
    assert len(pipeline.open_source("digits", target, "train")) == 1797


# --- preprocessing -------------------------------------------------------------------------------------------

def adm_center_crop_reference(pil_image, image_size):
    """ADM's center_crop_arr (guided-diffusion image_datasets.py), as the reference's train.py uses it."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (64, 64), (17, 33), (5, 3), (512, 256), (1000, 999),
                                  (33, 32), (130, 70)])
@pytest.mark.parametrize("target", [32, 8])
def test_adm_center_crop_matches_pil_statement(size, target):
    rng = np.random.default_rng(sum(size) + target)
    w, h = size
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = preprocess.adm_center_crop(rgb, target)
    assert got.shape == (target, target, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, adm_center_crop_reference(Image.fromarray(rgb), target))
    gray = rgb[..., :1]
    got = preprocess.adm_center_crop(gray, target)
    assert got.shape == (target, target, 1)
    np.testing.assert_array_equal(got[..., 0], adm_center_crop_reference(Image.fromarray(gray[..., 0]), target))
    # At the target size the crop is the identity (the loader skips it there).
    square = rgb[:target, :target] if min(w, h) >= target else np.resize(rgb, (target, target, 3))
    np.testing.assert_array_equal(preprocess.adm_center_crop(square, target), square)


def test_flip_and_float_conversion():
    image = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3, 1)
    flips = [preprocess.random_flip(image, np.random.default_rng(s)) for s in range(40)]
    n_flipped = sum(np.array_equal(f, image[:, ::-1]) for f in flips)
    assert 8 < n_flipped < 32 and all(np.array_equal(f, image) or np.array_equal(f, image[:, ::-1]) for f in flips)
    x = preprocess.to_float(np.array([0, 127, 255], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [-1.0, 127 / 127.5 - 1, 1.0], rtol=0, atol=1e-7)


# --- loader --------------------------------------------------------------------------------------------------

def test_loader_shapes_dtypes_range(digits_dir):
    batch = take(pipeline.make_train_loader(digits_cfg(digits_dir), 32, seed=0), 1)[0]
    assert set(batch) == {"image", "label"}
    # uint8 as read: the step converts on the device.
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (32, 8, 8, 1)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (32,)
    assert batch["image"].min() == 0 and batch["image"].max() == 255
    assert ((batch["label"] >= 0) & (batch["label"] < 10)).all()
    # Another size and channel count: ADM crop (here an upscale) and gray -> RGB.
    batch = take(pipeline.make_train_loader(digits_cfg(digits_dir, image_size=16, channels=3), 8, seed=0), 1)[0]
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])


def test_loader_deterministic_given_seed(digits_dir):
    cfg = digits_cfg(digits_dir)
    a = take(pipeline.make_train_loader(cfg, 64, seed=3), 3)
    b = take(pipeline.make_train_loader(cfg, 64, seed=3), 3)
    c = take(pipeline.make_train_loader(cfg, 64, seed=4), 3)
    assert_same_batches(a, b)
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_random_flip_flips_about_half(digits_dir):
    plain = take(pipeline.make_train_loader(digits_cfg(digits_dir, random_flip=False), 128, seed=0), 1)[0]["image"]
    flipped = take(pipeline.make_train_loader(digits_cfg(digits_dir, random_flip=True), 128, seed=0), 1)[0]["image"]
    same = np.array([np.array_equal(p, f) for p, f in zip(plain, flipped)])
    mirrored = np.array([np.array_equal(p[:, ::-1], f) for p, f in zip(plain, flipped)])
    assert (same | mirrored).all()
    assert (mirrored & ~same).sum() > 30 and (same & ~mirrored).sum() > 30


def test_epochs_continue_reshuffled():
    ids = sum((record_ids(b) for b in take(pipeline.make_train_loader(CONST_CFG, 25, 0, source=ConstSource(100)), 8)),
              [])
    assert len(ids) == 200
    first, second = ids[:100], ids[100:]
    assert sorted(first) == list(range(100)) and sorted(second) == list(range(100))
    assert first != list(range(100)) and first != second


def test_shards_are_disjoint_and_cover_the_data():
    shards = []
    for i in range(2):
        opts = grain.sharding.ShardOptions(shard_index=i, shard_count=2, drop_remainder=True)
        batches = take(pipeline.make_train_loader(CONST_CFG, 16, 0, shard_options=opts, source=ConstSource(64)), 4)
        assert all(b["image"].shape[0] == 8 for b in batches)  # local batch = global / shard count
        shards.append(sum((record_ids(b) for b in batches), []))
    assert len(set(shards[0])) == 32 and len(set(shards[1])) == 32
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(64))
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_train_loader(CONST_CFG, 15, 0, shard_options=opts, source=ConstSource(64))


def test_a_start_step_gives_the_batches_of_the_uninterrupted_loader(digits_dir):
    cfg = digits_cfg(digits_dir)
    uninterrupted = take(pipeline.make_train_loader(cfg, 64, seed=0), 43)
    # Past the first epoch (1797 / 64 = 28 batches): the position is the step, nothing else.
    assert_same_batches(take(pipeline.make_train_loader(cfg, 64, seed=0, start_step=40), 3), uninterrupted[40:])


def test_global_batches_do_not_depend_on_the_host_count():
    """Global batch s holds the same records (with the same flips) whether 1, 2 or 4 hosts read it,
    so a run resumes on another number of hosts as it would have gone on."""
    source, steps = ConstSource(50), range(5, 9)  # global batch 20: epochs of 2.5 batches
    cfg = dict(CONST_CFG, random_flip=True)

    def global_batches(hosts):
        parts = [take(pipeline.make_train_loader(
            cfg, 20, 3, steps.start, source=source,
            shard_options=grain.sharding.ShardOptions(shard_index=p, shard_count=hosts)), len(steps))
            for p in range(hosts)]
        return [{k: np.concatenate([part[s][k] for part in parts]) for k in ("image", "label")}
                for s in range(len(steps))]

    one = global_batches(1)
    assert_same_batches(global_batches(2), one)
    assert_same_batches(global_batches(4), one)
    ids = sum((record_ids(b) for b in take(pipeline.make_train_loader(cfg, 20, 3, source=source), 10)), [])
    assert sum((record_ids(b) for b in one), []) == ids[100:180]


def test_two_workers_outside_absl_app_give_the_batches_of_none(digits_dir):
    with_workers = take(pipeline.make_train_loader(digits_cfg(digits_dir, worker_count=2), 64, seed=0,
                                                   start_step=5), 3)
    assert_same_batches(with_workers, take(pipeline.make_train_loader(digits_cfg(digits_dir), 64, seed=0,
                                                                      start_step=5), 3))


def test_label_out_of_range_is_an_error_naming_the_record():
    labels = [3] * 40
    labels[17] = 10
    loader = pipeline.make_train_loader(dict(CONST_CFG, random_flip=False), 40, 0, source=ConstSource(40, labels))
    with pytest.raises(ValueError, match=r"record 17 has label 10, outside \[0, 10\)"):
        take(loader, 1)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(pipeline.DatasetNotFoundError) as e:
        pipeline.open_source("imagenet2012", str(tmp_path), "train")
    msg = str(e.value)
    assert "tfds build imagenet2012 --manual_dir" in msg and "ILSVRC2012_img_train.tar" in msg
    assert "dit-jax build-dataset" in msg and str(tmp_path) in msg
    with pytest.raises(pipeline.DatasetNotFoundError, match="no_such_dataset.*not found"):
        pipeline.make_train_loader(dict(DIGITS_CFG, name="no_such_dataset", data_dir=str(tmp_path)), 8, 0)


def test_to_global_on_one_device():
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batch = take(pipeline.make_train_loader(CONST_CFG, 12, 0, source=ConstSource(30)), 1)[0]
    out = pipeline.to_global(batch, sharding)
    assert set(out) == {"image", "label"}
    for k in out:
        assert isinstance(out[k], jax.Array) and out[k].sharding == sharding
        assert out[k].shape == batch[k].shape and out[k].dtype == batch[k].dtype
        np.testing.assert_array_equal(np.asarray(out[k]), batch[k])


# --- image folder --------------------------------------------------------------------------------------------

def make_image_folder(root):
    """Three classes of RGB/gray/RGBA PNGs, JPEGs and a WebP of several sizes, a corrupt JPEG, a stray .txt."""
    rng = np.random.default_rng(0)
    specs = {"apple": [((40, 30), "RGB", "png"), ((20, 50), "RGB", "jpg"), ((10, 10), "L", "png")],
             "banana": [((64, 48), "RGBA", "png"), ((16, 16), "RGB", "jpeg")],
             "cherry": [((24, 36), "RGB", "webp"), ((12, 9), "RGB", "png")]}
    files = {}
    for label, (cls, items) in enumerate(sorted(specs.items())):
        os.makedirs(root / cls)
        for i, ((w, h), mode, ext) in enumerate(items):
            channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
            pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
            path = root / cls / f"img{i}.{ext}"
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
            files[f"{cls}/img{i}.{ext}"] = label
    (root / "banana" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "cherry" / "notes.txt").write_text("not an image")
    return files


def test_image_folder_build_and_load_with_adm_crop(tmp_path):
    src, data_dir = tmp_path / "src", str(tmp_path / "tfds")
    files = make_image_folder(src)
    messages = []
    assert image_folder.build_image_folder(str(src), data_dir, "fruit", log=messages.append) == data_dir
    report = "\n".join(messages)
    assert "7 images in 3 classes" in report
    assert "skipped 1 unreadable" in report and "banana/broken.jpg" in report
    with open(os.path.join(data_dir, "fruit", "1.0.0", image_folder.SKIPPED_FILE)) as f:
        assert f.read().split() == ["banana/broken.jpg"]

    import tensorflow_datasets as tfds
    assert tfds.builder("fruit", data_dir=data_dir).info.features["label"].names == ["apple", "banana", "cherry"]
    source = pipeline.open_source("fruit", data_dir, "train")
    assert len(source) == 7
    stored = {source[i]["file_name"].decode(): source[i]["label"] for i in range(7)}
    assert stored == files

    # Through the loader (12 images: past one epoch of 7): every image is the ADM crop of a source file
    # of its class, decoded with PIL and converted to RGB (gray and RGBA files included).
    expected = {}
    for rel, label in files.items():
        with Image.open(src / rel) as im:
            crop = adm_center_crop_reference(im.convert("RGB"), 16)
        expected.setdefault(label, []).append(crop)
    cfg = dict(name="fruit", data_dir=data_dir, split="train", image_size=16, channels=3, num_classes=3,
               random_flip=False, worker_count=0, worker_buffer_size=1)
    seen = 0
    for batch in take(pipeline.make_train_loader(cfg, 4, seed=0), 3):
        assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
        for image, label in zip(batch["image"], batch["label"]):
            assert any(np.array_equal(image, e) for e in expected[int(label)])
            seen += 1
    assert seen == 12

    # A second build keeps the existing dataset.
    messages.clear()
    image_folder.build_image_folder(str(src), data_dir, "fruit", log=messages.append)
    assert "already built" in messages[0]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.*<class_name>"):
        image_folder.build_image_folder(str(tmp_path / "missing"), str(tmp_path / "out"), "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders.*<class_name>"):
        image_folder.build_image_folder(str(tmp_path / "empty"), str(tmp_path / "out"), "x")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        image_folder.build_image_folder(str(tmp_path / "empty"), str(tmp_path / "out"), "x")
    with pytest.raises(ValueError, match="snake_case"):
        image_folder.build_image_folder(str(tmp_path), str(tmp_path / "out"), "My-Data")
    with pytest.raises(ValueError, match="TFDS catalog"):
        image_folder.build_image_folder(str(tmp_path), str(tmp_path / "out"), "mnist")
