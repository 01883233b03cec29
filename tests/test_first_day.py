"""Faults a new user met on the first day: commands that deleted or overwrote what they should not,
a sampler that reported success for output it did not make, resumes that silently changed the data,
and errors that came as tracebacks with a "retry" exit code. Each test failed before its fix."""

import os

import jax
import numpy as np
import pytest

from dit_jax.cli import main
from dit_jax.train.loop import train_and_evaluate
from helpers import one_error_line, snapshot, tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-step training run (never modified by a test: copy it first)."""
    wd = str(tmp_path_factory.mktemp("run") / "run")
    train_and_evaluate(tiny_config(total_steps=2, checkpoint_every=2), wd)
    return wd


@pytest.fixture(scope="module")
def weights(run, tmp_path_factory):
    """The run's EMA weights exported once."""
    out = str(tmp_path_factory.mktemp("weights") / "w")
    assert main(["export-weights", "--workdir", run, "--out", out]) == 0
    return out


# ------------------------------------------------------------------- 1. --force replaces only weights

@pytest.mark.parametrize("target", ["run", "run/checkpoints", "parent", "a file", "dir with a note"])
def test_export_weights_force_never_deletes_what_is_not_a_weights_dir(run, tmp_path, capsys, target):
    import shutil
    parent = tmp_path / "parent"
    wd = str(parent / "run")
    shutil.copytree(run, wd)
    (parent / "notes.txt").write_text("mine")
    out = {"run": wd, "run/checkpoints": os.path.join(wd, "checkpoints"), "parent": str(parent),
           "a file": str(parent / "notes.txt"), "dir with a note": str(tmp_path / "other")}[target]
    if target == "dir with a note":
        os.makedirs(out)
        open(os.path.join(out, "note.txt"), "w").write("keep me")
    before = snapshot(str(tmp_path))
    assert main(["export-weights", "--workdir", wd, "--out", out, "--force"]) == 2
    one_error_line(capsys, "is a file" if target == "a file" else "--force replaces only a weights directory")
    assert snapshot(str(tmp_path)) == before


def test_export_weights_force_replaces_a_weights_dir_and_a_failed_export_keeps_it(run, weights, tmp_path, capsys,
                                                                                  monkeypatch):
    import shutil

    from dit_jax.weights import load_weights
    out = str(tmp_path / "w")
    shutil.copytree(weights, out)
    assert main(["export-weights", "--workdir", run, "--out", out, "--raw", "--force"]) == 0
    raw, _ = load_weights(out)
    ema, _ = load_weights(weights)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(ema)))
    assert sorted(os.listdir(tmp_path)) == ["w"]  # no temporary sibling left
    # An export that fails while writing leaves the weights that were there, and nothing else.
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    import orbax.checkpoint as ocp
    # The handler fails after Orbax has prepared the directory: the disk filled up while writing.
    monkeypatch.setattr(ocp.CompositeCheckpointHandler, "async_save", broken)
    monkeypatch.setattr(ocp.CompositeCheckpointHandler, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        from dit_jax.weights import save_weights
        save_weights(out, ema, load_weights(weights)[1], force=True)
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["w"]


def test_convert_to_torch_does_not_overwrite_a_file_without_force(weights, tmp_path, capsys):
    pytest.importorskip("torch")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"precious")
    assert main(["convert", "--to-torch", weights, "--out", str(pt)]) == 2
    one_error_line(capsys, "exists", "--force")
    assert pt.read_bytes() == b"precious"
    assert main(["convert", "--to-torch", weights, "--out", str(tmp_path)]) == 2
    one_error_line(capsys, "is a directory")
    assert main(["convert", "--to-torch", weights, "--out", str(pt), "--force"]) == 0
    assert pt.read_bytes() != b"precious" and sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_sample_npz_never_overwrites_a_file_it_did_not_make(tmp_path, capsys):
    ref = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(ref, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=np.zeros(3), sigma=np.eye(3))
    before = ref.read_bytes()
    assert main(["sample", "--num-samples", "4", "--out", str(ref)]) == 2
    one_error_line(capsys, "exists and was not written by `dit-jax sample", "choose another --out")
    assert ref.read_bytes() == before


def test_reference_batch_replaces_only_a_reference_batch_and_only_with_force(tmp_path, capsys):
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    before = samples.read_bytes()
    (tmp_path / "i.pth").write_bytes(b"never read")
    common = ["reference-batch", "--dataset", "digits", "--image-size", "8", "--inception", str(tmp_path / "i.pth")]
    assert main(common + ["--out", str(samples)]) == 2
    one_error_line(capsys, "exists", "--force")
    assert main(common + ["--out", str(samples), "--force"]) == 2
    one_error_line(capsys, "is not a reference batch")
    assert samples.read_bytes() == before


def test_extract_latents_does_not_call_an_image_dataset_its_output(tmp_path, capsys):
    images = tmp_path / "digits" / "1.0.0"
    images.mkdir(parents=True)
    (images / "dataset_info.json").write_text('{"name": "digits"}')
    (images / "features.json").write_text('{"featuresDict": {"features": {"image": {}, "label": {}}}}')
    (tmp_path / "vae").mkdir()
    args = ["extract-latents", "--dataset", "digits", "--data-dir", str(tmp_path), "--image-size", "8",
            "--vae", str(tmp_path / "vae"), "--out-name", "digits"]
    assert main(args) == 2
    one_error_line(capsys, "is not a latent dataset", "--out-name")
    (tmp_path / "other" / "1.0.0").mkdir(parents=True)
    assert main(args[:-1] + ["other"]) == 2
    one_error_line(capsys, "holds no finished dataset", "never deleted")


def test_build_dataset_into_an_occupied_directory_fails_before_building(tmp_path, capsys):
    (tmp_path / "data" / "mine" / "1.0.0").mkdir(parents=True)
    (tmp_path / "data" / "mine" / "1.0.0" / "notes.txt").write_text("keep")
    (tmp_path / "src" / "a").mkdir(parents=True)
    assert main(["build-dataset", str(tmp_path / "src"), "--name", "mine", "--data-dir", str(tmp_path / "data")]) == 2
    one_error_line(capsys, "holds no finished dataset")
    assert (tmp_path / "data" / "mine" / "1.0.0" / "notes.txt").read_text() == "keep"


def test_force_replaces_weights_in_a_bucket_and_refuses_a_run_there(gcs_bucket, weights):
    from conftest import gcs_objects
    from dit_jax import storage
    from dit_jax.weights import load_weights, save_weights
    bucket, url = gcs_bucket
    params, cfg = load_weights(weights)
    path = save_weights(f"gs://{bucket}/force/w", params, cfg)
    zeros = jax.tree.map(np.zeros_like, params)
    save_weights(path, zeros, cfg, force=True)
    assert all((x == 0).all() for x in jax.tree.leaves(load_weights(path)[0]))
    assert not [n for n in gcs_objects(url, bucket, "force/") if not n.startswith("force/w/")]  # no sibling left
    storage.write_bytes_atomic(f"gs://{bucket}/force/run/checkpoints/1/x", b"a checkpoint")
    with pytest.raises(FileExistsError, match="training run"):
        save_weights(f"gs://{bucket}/force/run", params, cfg, force=True)
    assert storage.exists(f"gs://{bucket}/force/run/checkpoints/1/x")


# ------------------------------------------------------------------- 2. one writer per sample output

def _fake_run(during=None):
    """A sampler over all devices (no model: each image is filled with its label), calling
    `during(n)` before the n-th batch (1-based), as another process might act meanwhile."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    calls = []

    def run(params, labels, keys, vae_params):
        calls.append(1)
        if during is not None:
            during(len(calls))
        seeds = np.asarray(jax.random.key_data(keys))[:, -1].astype(np.uint8)
        images = np.broadcast_to((np.asarray(labels) * 16 + seeds % 16)[:, None, None, None].astype(np.uint8),
                                 (len(labels), 2, 2, 3))
        return jax.device_put(np.ascontiguousarray(images), sharding)
    return run


PARAMS = {"w": np.ones(3, np.float32)}


def _sample(out, seed=0, during=None, n=20):
    from dit_jax.sampling.npz import sample_npz
    return sample_npz(_fake_run(during), PARAMS, n, 5, seed, out, batch_per_device=4, log=lambda s: None)


def test_a_second_sampler_on_one_output_is_refused_and_the_first_output_is_its_own(tmp_path):
    from dit_jax.workdir_lock import WorkdirLocked
    out, alone = str(tmp_path / "a.npz"), str(tmp_path / "alone.npz")
    _sample(alone)
    refused = []

    def second_writer(n):  # B (seed 1) starts on A's output while A samples its third batch
        if n == 3:
            try:
                _sample(out, seed=1)
            except WorkdirLocked as e:
                refused.append(str(e))
    _sample(out, during=second_writer)
    assert len(refused) == 1 and "in use by another `dit-jax sample`" in refused[0], refused
    with np.load(out) as a, np.load(alone) as b:  # A's output holds A's images only
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])
    assert not os.path.exists(os.path.join(out + ".shards", "sample.lock"))  # released


def test_sample_cli_refuses_a_held_output_in_one_line(weights, tmp_path, capsys):
    from dit_jax.workdir_lock import WorkdirLock
    out = str(tmp_path / "a.npz")
    held = WorkdirLock(out + ".shards", name="sample.lock").acquire()
    try:
        assert main(["sample", "--weights", weights, "--num-samples", "2", "--steps", "2", "--out", out]) == 2
    finally:
        held.release()
    one_error_line(capsys, "in use by another `dit-jax sample`", "choose another --out")
    assert not os.path.exists(out)


@pytest.mark.parametrize("interference", ["shard deleted", "manifest rewritten"])
def test_the_assembly_never_reports_output_it_did_not_make(tmp_path, interference):
    """As if a second writer got past the lock (a bucket's lock is best effort): the final assembly
    checks every shard against this run's manifest, and writes nothing when one is not its own."""
    import glob
    import json

    from dit_jax.sampling import npz
    out = str(tmp_path / "a.npz")
    shards = out + ".shards"

    def interfere(n):
        if n != 4:
            return
        if interference == "shard deleted":
            os.remove(sorted(glob.glob(os.path.join(shards, "shard_*")))[0])
        else:  # what a writer with other settings does first
            path = os.path.join(shards, "manifest.json")
            with open(path) as f:
                manifest = json.load(f)
            with open(path, "w") as f:
                json.dump(dict(manifest, seed=1), f)
    with pytest.raises(npz.OutputChanged, match="rerun the same command to resume"):
        _sample(out, during=interfere)
    assert not os.path.exists(out)


def test_one_sampler_per_output_in_a_bucket(gcs_bucket):
    from dit_jax import storage
    from dit_jax.workdir_lock import WorkdirLock, WorkdirLocked
    bucket, _ = gcs_bucket
    out = f"gs://{bucket}/samples/a.npz"
    held = WorkdirLock(out + ".shards", name="sample.lock").acquire()
    with pytest.raises(WorkdirLocked, match="another `dit-jax sample`"):
        _sample(out, n=8)
    held.release()
    _sample(out, n=8)
    assert storage.exists(out) and not storage.exists(out + ".shards/sample.lock")


# ------------------------------------------------------------- 3. a resume that would change the data

def _copy_run(run, tmp_path):
    import shutil
    wd = str(tmp_path / "run")
    shutil.copytree(run, wd)
    return wd


@pytest.mark.parametrize("change, named", [({"batch_size": 16}, "batch_size: checkpoint 8, config 16"),
                                           ({"data.random_flip": True}, "data.random_flip: checkpoint False"),
                                           ({"data.split": "train[:50%]"}, "data.split: checkpoint 'train'")])
def test_resuming_with_another_data_stream_is_refused_naming_both_values(run, tmp_path, change, named):
    wd = _copy_run(run, tmp_path)
    kept = lambda: {k: v for k, v in snapshot(wd).items() if not k.startswith("tensorboard")}  # noqa: E731
    before = kept()
    with pytest.raises(ValueError, match="accept_data_change=True") as e:
        train_and_evaluate(tiny_config(total_steps=3, checkpoint_every=3, **change), wd)
    assert named in str(e.value) and "\n" not in str(e.value)
    assert kept() == before  # checkpoints and metrics untouched


@pytest.mark.slow
def test_accept_data_change_goes_on_with_the_new_batch_size(run, tmp_path):
    import json
    wd = _copy_run(run, tmp_path)
    train_and_evaluate(tiny_config(total_steps=3, checkpoint_every=3, batch_size=16, accept_data_change=True), wd)
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]


# ------------------------------------------------------- 4. a workdir that cannot be written: exit 2

def _train_cli(workdir, *more):
    return main(["train", f"--workdir={workdir}", "--config.total_steps=1", "--config.evals.digits.kind=",
                 "--config.sample.every=0", *more])


@pytest.mark.parametrize("case, needles", [
    ("a regular file", ["is a regular file, not a directory"]),
    ("below a regular file", ["which is a regular file, not a directory"]),
    ("/sys", ["cannot be written", "operation not permitted"]),
    ("read-only filesystem", ["cannot be written", "read-only"]),
    ("empty", ["--workdir is empty"]),
])
def test_a_workdir_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, case, needles):
    import errno
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    workdir = {"a regular file": str(blocker), "below a regular file": str(blocker / "run"),
               "/sys": "/sys/dit-jax-test/run", "read-only filesystem": str(tmp_path / "ro"), "empty": ""}[case]
    if case == "/sys" and os.access("/sys", os.W_OK) and os.geteuid() != 0:
        pytest.skip("/sys is writable here")
    if case == "read-only filesystem":  # as a read-only mount answers the lock file's creation
        real_open = os.open

        def read_only(path, *args, **kwargs):
            if str(path).startswith(workdir):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *args, **kwargs)
        monkeypatch.setattr(os, "open", read_only)
    assert _train_cli(workdir) == 2
    line = one_error_line(capsys)
    for needle in needles:
        assert needle in line.lower(), line
    assert blocker.read_text() == "not a directory"


def test_device_out_of_memory_is_bad_input_not_a_crash_to_retry(tmp_path, capsys, monkeypatch):
    from dit_jax.train import loop

    def oom(config, workdir):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB.")
    monkeypatch.setattr(loop, "train_and_evaluate", oom)
    assert _train_cli(str(tmp_path / "run")) == 2
    one_error_line(capsys, "device memory exhausted", "80.00GiB", "remat")


def test_a_permanent_os_error_in_any_command_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["models"]) == 0  # (a control: the command itself works)
    capsys.readouterr()
    assert main(["sample", "--num", "1", "--steps", "2", "--out", str(blocker / "grid.png")]) == 2
    one_error_line(capsys, "which is a file, not a directory")  # found as the arguments are parsed


@pytest.mark.parametrize("error, needle", [
    (PermissionError(13, "Permission denied", "/srv/x"), "/srv/x: permission denied"),
    (OSError(30, "Read-only file system", "/mnt/ro/x"), "/mnt/ro/x: the filesystem is read-only"),
    (OSError(28, "No space left on device", "/data/x"), "/data/x: no space left on the device"),
    (FileExistsError(17, "File exists", "{file}"), "is a regular file where a directory is expected"),
])
def test_a_permanent_os_error_met_while_working_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, error,
                                                                        needle):
    from dit_jax.cli import models
    blocker = tmp_path / "file"
    blocker.write_text("x")
    if error.filename == "{file}":
        error = FileExistsError(17, "File exists", str(blocker))  # what os.makedirs raises through a file

    def fails(args):
        raise error
    monkeypatch.setattr(models, "run", fails)
    assert main(["models"]) == 2
    one_error_line(capsys, needle)


def test_a_transient_os_error_keeps_its_traceback_and_exit_1(monkeypatch):
    from dit_jax.cli import models

    def dropped(args):
        raise ConnectionResetError(104, "Connection reset by peer")
    monkeypatch.setattr(models, "run", dropped)
    with pytest.raises(ConnectionResetError):  # the console script turns it into a traceback and exit 1
        main(["models"])


# ----------------------------------------------------- 5. a config file that does not run: one line

BAD_CONFIG_FILES = [
    ("syntax error", "def get_config(arg=''):\n    return (\n",
     ":2: syntax error in the config file: '(' was never closed"),
    ("raises in get_config", "import ml_collections\n\n\ndef get_config(arg=''):\n    return {}['missing']\n",
     ":5: get_config() raised KeyError: 'missing'"),
    ("raises on import", "import ml_collections\nx = 1 / 0\n", ":2: running the config file raised ZeroDivisionError"),
    ("no get_config", "import ml_collections\n\n\ndef config():\n    return None\n", "defines no get_config()"),
    ("returns a dict", "def get_config(arg=''):\n    return {'batch_size': 1}\n", "not an ml_collections.ConfigDict"),
]


@pytest.mark.parametrize("command", ["train", "compile"])
@pytest.mark.parametrize("name, text, needle", BAD_CONFIG_FILES, ids=[c[0] for c in BAD_CONFIG_FILES])
def test_a_config_file_that_does_not_run_is_one_line_naming_file_and_line(tmp_path, capsys, command, name, text,
                                                                          needle):
    path = tmp_path / "my_config.py"
    path.write_text(text)
    extra = ["--topology=v5p-8"] if command == "compile" else [f"--workdir={tmp_path / 'run'}"]
    assert main([command, f"--config={path}", *extra]) == 2
    one_error_line(capsys, str(path), needle)
    assert not (tmp_path / "run").exists()


def test_train_and_compile_parse_config_files_in_one_module():
    """No copy of the parsing: train, compile and benchmark take --config from the one front end
    (dit_jax.cli.config_args), which takes it from dit_jax.configs.files."""
    import inspect

    from dit_jax.cli import benchmark, compile as compile_command, config_args, train
    for module in (train, compile_command, benchmark):
        source = inspect.getsource(module)
        assert "DEFINE_config_file" not in source and "config_from_args" not in source
        assert "config_args.load(args" in source
    assert "from dit_jax.configs.files import" in inspect.getsource(config_args)


# ---------------------------------------------- 6. evaluate REF REF: a warning, and no negative FID shown

def test_a_singular_covariance_puts_the_distance_of_identical_statistics_below_zero():
    """The cause of the -0.0041 a user saw: the evaluator adds eps to the diagonals inside the square
    root only, so identical rank-deficient statistics give -2 * F * eps."""
    from dit_jax.metrics.frechet import feature_statistics, frechet_distance
    features = np.random.default_rng(0).normal(size=(6, 64))
    features[:, 0] = 1.0  # a feature without variance: scipy finds the product singular
    mu, sigma = feature_statistics(features)
    with pytest.warns(UserWarning, match="singular product"):
        d = frechet_distance(mu, sigma, mu, sigma)
    assert d == pytest.approx(-2 * 64 * 1e-6, rel=1e-3)


# Singular statistics by construction (the reference against itself), and our Frechet distance says so.
@pytest.mark.filterwarnings("ignore:frechet distance. singular product:UserWarning")
def test_evaluate_the_reference_against_itself_warns_and_prints_no_negative_distance(tmp_path, capsys, monkeypatch):
    import json

    from dit_jax.metrics import adm_metrics, frechet
    from dit_jax.jobs import evaluate_npz as job
    rng = np.random.default_rng(0)
    pool, spatial = rng.normal(size=(6, adm_metrics.POOL_DIM)), rng.normal(size=(6, adm_metrics.SPATIAL_DIM))
    pool[:, 0] = spatial[:, 0] = 1.0  # singular statistics, as in the first test
    ref = str(tmp_path / "ref.npz")
    adm_metrics.write_reference_batch(ref, rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), pool, spatial,
                                      n_images=6)
    # The Inception network stands aside (its features are the reference's own, as for the same images)
    # and the distances are the real formula on the first 64 features (the full 2048-d square root
    # takes tens of seconds here).
    (tmp_path / "i.npz").write_bytes(b"never read")
    monkeypatch.setattr(job, "load_fid_inception", lambda path: {})
    monkeypatch.setattr(job, "extract_features", lambda variables, images, batch_size, model, outputs=None: {
        "pool": pool, "spatial": spatial, "logits": rng.normal(size=(6, adm_metrics.NUM_LOGITS))})
    small = lambda f, s: frechet.frechet_distance(s.mu[:64], s.sigma[:64, :64], s.mu[:64],  # noqa: E731
                                                  s.sigma[:64, :64])
    monkeypatch.setattr(job.adm_metrics, "evaluate_features", lambda feats, ref_pool, stats, stats_s: {  # noqa
        "fid": small(feats, stats), "sfid": small(feats, stats_s), "inception_score": 1.0, "precision": 1.0,
        "recall": 1.0})
    assert main(["evaluate", ref, ref, "--inception", str(tmp_path / "i.npz"), "--min-reference-images", "4",
                 "--out", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "the same file" in out and "the reference batch's own statistics" in out
    lines = out.splitlines()
    values = lines[[i for i, line in enumerate(lines) if line.split("|")[0].strip() == "FID"][0] + 1]
    assert values.split("|")[0].strip() == "0.0000" and "-" not in values, values
    raw = json.load(open(tmp_path / "m.json"))["fid"]
    assert raw == pytest.approx(-2 * 64 * 1e-6, rel=1e-3)  # the JSON keeps the raw value
    assert "printed as 0" in out and "1e-6" in out


# ------------------------------------------------------- 7. no libtpu noise where there is no TPU

def test_platforms_are_left_to_jax_wherever_an_accelerator_or_a_choice_exists():
    import fnmatch

    from dit_jax.platforms import chosen_platforms
    nothing = lambda pattern: []  # noqa: E731
    assert chosen_platforms({}, find=nothing) == "cpu"
    assert chosen_platforms({"JAX_PLATFORMS": ""}, find=nothing) == "cpu"  # empty: jax's own choice
    assert chosen_platforms({"JAX_PLATFORMS": "tpu"}, find=nothing) is None  # the user's choice is kept
    assert chosen_platforms({"TPU_WORKER_ID": "0"}, find=nothing) is None  # a TPU host
    for device in ("/dev/accel0", "/dev/vfio/0", "/dev/nvidia0", "/dev/kfd"):
        def present(pattern, device=device):
            return [device] if fnmatch.fnmatch(device, pattern) else []
        assert chosen_platforms({}, find=present) is None, device


@pytest.mark.slow
def test_no_libtpu_noise_on_a_host_without_a_tpu(tmp_path):
    import glob
    import importlib.util
    import subprocess
    import sys

    if any(glob.glob(p) for p in ("/dev/accel*", "/dev/vfio/*", "/dev/nvidia*", "/dev/kfd")) or any(
            os.environ.get(k) for k in ("TPU_NAME", "TPU_WORKER_ID", "TPU_ACCELERATOR_TYPE")):
        pytest.skip("this host has an accelerator")
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("no libtpu here: nothing would make the noise")
    # A command that starts jax's backends (and nothing else): `models` with its work replaced. The
    # noise comes and goes (libtpu stays silent while another process holds /tmp/libtpu_lockfile),
    # so the test asks jax whether it tried the TPU backend at all: its failed backends are recorded.
    script = ("import jax, sys\nfrom jax._src import xla_bridge\nfrom dit_jax import cli\nfrom dit_jax.cli import models\n"
              "models.run = lambda args: print('devices', [d.platform for d in jax.devices()],\n"
              "                                'tried', sorted(xla_bridge._backend_errors)) or 0\n"
              "sys.exit(cli.main(['models']))\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "devices ['cpu']" in res.stdout, res.stdout + res.stderr
    assert "'tpu'" not in res.stdout, res.stdout  # the TPU backend was never started
    assert "TPU" not in res.stderr and "libtpu" not in res.stderr and "E0000" not in res.stderr, res.stderr


# --------------------------------------------------------------------------------- 8. smaller items

def test_sample_from_a_run_logs_no_orbax_warnings(run, tmp_path, caplog, capsys):
    import logging
    caplog.set_level(logging.WARNING)
    out = str(tmp_path / "g.jpg")
    assert main(["sample", "--workdir", run, "--num", "2", "--steps", "2", "--out", out]) == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    with open(out, "rb") as f:
        assert f.read(3) == b"\xff\xd8\xff"  # .jpg holds JPEG bytes, not PNG's


def test_version(capsys):
    import dit_jax
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dit-jax ") and "jax " in out and os.path.dirname(dit_jax.__file__) in out


def test_classes_with_an_empty_item_names_the_flag(capsys):
    assert main(["sample", "--classes", "1,,2", "--num", "2"]) == 2
    one_error_line(capsys, "--classes", "'1,,2'", "e.g. 207,360,387")


@pytest.mark.slow
def test_resuming_a_finished_run_with_fewer_total_steps_says_so(run, tmp_path, capsys):
    wd = _copy_run(run, tmp_path)
    with pytest.raises(ValueError, match=r"already at step 2, past --config.total_steps=1: nothing to train"):
        train_and_evaluate(tiny_config(total_steps=1, checkpoint_every=1), wd)
    capsys.readouterr()
    train_and_evaluate(tiny_config(total_steps=2, checkpoint_every=2), wd)  # the same total: a no-op, said
    assert "step 2 is total_steps: nothing left to train" in capsys.readouterr().out


def test_reference_batches_are_written_with_the_usual_file_mode(tmp_path):
    from dit_jax.metrics.adm_metrics import POOL_DIM, SPATIAL_DIM, write_reference_batch
    rng = np.random.default_rng(0)
    path = tmp_path / "ref.npz"
    write_reference_batch(str(path), rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8),
                          rng.normal(size=(6, POOL_DIM)), rng.normal(size=(6, SPATIAL_DIM)), n_images=6)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
