"""The ADM evaluation batch: `num_samples` images sampled over all devices and hosts into one `.npz`,
in resumable shards recorded by a manifest."""

from __future__ import annotations

import hashlib
import io
import json
import time

import jax
import numpy as np

from dit_jax import storage
from dit_jax.sampling.labels import check_labels, labels_for
from dit_jax.sampling.run_sampler import sample_keys
from dit_jax import workdir_lock
from dit_jax.checksum import fingerprint
from dit_jax.exit_codes import RunStopped
from dit_jax.run import Run

MANIFEST = "manifest.json"
LOCK = "sample.lock"  # one writer per output, as one training per workdir
# 2: shard names carry the digest of the manifest that made them, so the assembly takes only those.
SHARD_FORMAT = 2


class OutputChanged(RunStopped):
    """The shards changed under this run (another writer): the output is not written; a rerun resumes
    (exit code 1, a failure worth a rerun)."""


def _digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]


def _manifest(shard_dir) -> dict | None:
    path = storage.resolve(storage.join(shard_dir, MANIFEST))
    return json.loads(path.read_text()) if path.exists() else None


def out_problem(out_path: str) -> str | None:
    """Why `out_path` may not be written (an existing file that `sample_npz` did not make: a reference
    batch or someone's samples), or None. Its own output is recognised by the shard manifest beside it."""
    out = storage.resolve(out_path)
    if out.is_dir():
        return f"--out {out_path} is a directory; name the .npz file to write"
    if out.exists() and not storage.resolve(storage.join(out_path + ".shards", MANIFEST)).exists():
        return (f"--out {out_path} exists and was not written by `dit-jax sample --num-samples` (no "
                f"{out_path}.shards/{MANIFEST} beside it): choose another --out, or move the file away")
    return None


def _plan_shards(shard_dir, manifest: dict, num_shards: int, log) -> np.ndarray:
    """Which shards are still to do, decided on process 0 and sent to every host (hosts may see a
    shared filesystem at different moments). Shards made by other settings or another layout are
    deleted first: they would mix other images into the output."""
    from jax.experimental import multihost_utils
    todo = np.ones(num_shards, np.int32)
    if jax.process_index() == 0:
        directory = storage.makedirs(shard_dir)
        old = _manifest(shard_dir)
        if old is not None and old != manifest:
            changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            log(f"{shard_dir} holds shards made with other settings ({', '.join(changed)} differ): starting over")
        if old != manifest:
            for f in directory.glob("shard_*"):
                f.unlink()
            storage.write_bytes_atomic(storage.join(shard_dir, MANIFEST), json.dumps(manifest, indent=1).encode())
        done = {f.name for f in directory.glob("shard_*.npz")}
        digest = _digest(manifest)
        todo = np.asarray([any(_shard_name(s, p, jax.process_count(), digest) not in done
                               for p in range(jax.process_count())) for s in range(num_shards)], np.int32)
    if jax.process_count() > 1:
        todo = np.asarray(multihost_utils.broadcast_one_to_all(todo))
    return np.flatnonzero(todo)


def _shard_name(shard: int, process: int, processes: int, digest: str) -> str:
    return f"shard_{shard:06d}_{process}-of-{processes}.{digest}.npz"


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _whole_on_every_device(tree, mesh):
    """`tree` replicated on every device of every host, placed from this host's memory: a run's weights
    are read onto this process's first device (verified_restore), and a device_put from there to the
    other hosts' devices is a cross-host transfer that backends refuse (the CPU one; DCN transfers
    need flags of their own)."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    return jax.device_put(jax.device_get(tree), NamedSharding(mesh, P()))


def sample_npz(run: Run, params, num_samples: int, num_classes: int, seed: int, out_path: str,
               batch_per_device: int = 32, vae=None, settings: dict | None = None, log=print,
               labels: str = "random", guide_params=None) -> str:
    """Sample `num_samples` images into the ADM .npz (`arr_0` uint8 NHWC, exactly N; their labels as
    `arr_1`, as ADM's sampling scripts write them, and as `labels`).

    The work is split into shards of one global batch (batch_per_device x all devices of all
    hosts); each host writes the rows its devices hold as soon as a batch finishes, under
    OUT.shards/, so an interrupted run resumes without redoing them. OUT.shards/manifest.json records
    what made the shards (`settings`: weights, guidance, steps, sampler...; the weights' checksums,
    the seed and the shard layout): a rerun with anything else starts over. `run` is a
    `build_sampler(..., uint8=True)` function over all devices; `vae` is its (VAE params, VAEConfig)
    for latent models, uploaded once. Process 0 writes OUT.
    labels: "random" (DiT's uniform labels) or "balanced" (sample i of class i mod num_classes).
    guide_params: the autoguidance model's params for a `run` built with a guide (placed as `params`).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    check_labels(labels, num_samples, num_classes)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    params = _whole_on_every_device(params, mesh)
    vae_params = _whole_on_every_device(vae[0], mesh) if vae is not None else None
    if guide_params is not None:  # the guide sharded as the main model: both whole on every device
        guide_params = _whole_on_every_device(guide_params, mesh)
        settings = dict(settings or {}, guide_checksums=fingerprint(guide_params)[0])
    batch = batch_per_device * jax.device_count()
    shard_dir = out_path + ".shards"
    num_shards = -(-num_samples // batch)
    manifest = dict(settings or {}, seed=seed, num_classes=num_classes, weights_checksums=fingerprint(params)[0],
                    labels=labels, batch_per_device=batch_per_device, device_count=jax.device_count(),
                    process_count=jax.process_count(), shard_format=SHARD_FORMAT)
    # A second writer on this output would delete these shards (its settings differ) or mix its own in.
    lock = workdir_lock.take(shard_dir, name=LOCK, holder="`dit-jax sample`", advice="choose another --out")
    try:
        model = (params, guide_params)
        return _sample(run, model, vae_params, num_samples, num_classes, seed, out_path, shard_dir, batch,
                       num_shards, manifest, log, labels)
    finally:
        lock.release()


def _sample(run: Run, model, vae_params, num_samples, num_classes, seed, out_path, shard_dir, batch, num_shards,
            manifest, log, label_mode="random") -> str:
    from jax.experimental import multihost_utils

    todo = _plan_shards(shard_dir, manifest, num_shards, log)
    digest = _digest(manifest)
    log(f"sampling {num_samples} images in {num_shards} shards of {batch} on {jax.device_count()} devices; "
        f"{num_shards - len(todo)} shards already done")
    t0 = time.time()
    for count, s in enumerate(todo, 1):
        idx = np.arange(s * batch, (s + 1) * batch)
        labels = labels_for(label_mode, seed, idx, num_classes)
        params, guide_params = model
        guided = {} if guide_params is None else {"guide_params": guide_params}
        out = run(params, labels, sample_keys(seed, idx), vae_params, **guided)
        # Each host writes the rows its own devices hold: nothing crosses hosts.
        rows = {}
        for piece in out.addressable_shards:
            start = piece.index[0].start or 0
            rows.setdefault(start, np.asarray(piece.data))
        starts = sorted(rows)
        local_idx = np.concatenate([np.arange(a, a + len(rows[a])) for a in starts])
        storage.write_bytes_atomic(
            storage.join(shard_dir, _shard_name(s, jax.process_index(), jax.process_count(), digest)),
            _npz_bytes(images=np.concatenate([rows[a] for a in starts]), labels=labels[local_idx],
                       index=idx[local_idx]))
        rate = count * batch / (time.time() - t0)
        log(f"shard {count}/{len(todo)}: {rate:.2f} img/s, ETA {(len(todo) - count) * batch / rate:.0f} s")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dit_jax sample_npz shards")
    if jax.process_index() == 0:
        images, labels = _assemble(shard_dir, num_shards, num_samples, manifest, out_path)
        storage.write_bytes_atomic(out_path, _npz_bytes(arr_0=images, arr_1=labels, labels=labels))
        log(f"wrote {out_path}: arr_0 {images.shape} uint8, arr_1 (= labels) {labels.shape} ({label_mode})")
    return out_path


def _assemble(shard_dir, num_shards: int, num_samples: int, manifest: dict,
              out_path: str) -> tuple[np.ndarray, np.ndarray]:
    """The first num_samples images and labels of all hosts' shard files, in sample order; every shard
    checked to be this run's (the manifest on disk unchanged, each shard present under its name)."""
    def changed(what: str) -> OutputChanged:
        return OutputChanged(f"{what}, so {out_path} is not written; rerun the same command to resume (only "
                             "one `dit-jax sample` may write an --out at a time)")
    on_disk = _manifest(shard_dir)
    if on_disk != manifest:
        keys = sorted(k for k in set(on_disk or {}) | set(manifest) if (on_disk or {}).get(k) != manifest.get(k))
        raise changed(f"{shard_dir}/{MANIFEST} was changed by another writer during this run ({', '.join(keys)} "
                      "differ)")
    digest = _digest(manifest)
    images, labels, index = [], [], []
    processes = jax.process_count()
    for s in range(num_shards):
        for p in range(processes):
            path = storage.resolve(storage.join(shard_dir, _shard_name(s, p, processes, digest)))
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise changed(f"shard {path.name} is missing from {shard_dir} (deleted by another writer?)") from None
            z = np.load(io.BytesIO(data))
            images.append(z["images"]), labels.append(z["labels"]), index.append(z["index"])
    order = np.argsort(np.concatenate(index), kind="stable")
    index = np.concatenate(index)[order]
    if not np.array_equal(index[:num_samples], np.arange(num_samples)):
        raise changed(f"the shards in {shard_dir} do not hold samples 0..{num_samples - 1} exactly once")
    return np.concatenate(images)[order][:num_samples], np.concatenate(labels)[order][:num_samples]
