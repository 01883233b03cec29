"""Class-conditional sampling with a DiT: the jitted sampler over a batch, and image grids."""

from __future__ import annotations

import io
import json
import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax import storage
from dit_jax.diffusion.gaussian import GaussianDiffusion
from dit_jax.diffusion.samplers import guidance_channels, guided_model_fn, sample_loop
from dit_jax.models.dit import DiT, DiTConfig

MANIFEST = "manifest.json"


def make_sampler(config: DiTConfig, diffusion: GaussianDiffusion, cfg_scale: float = 1.0,
                 cfg_mode: str = "reference", sampler: str = "ddpm", eta: float = 0.0):
    """A jitted `fn(params, labels, key) -> samples (B, H, W, C)` in the model's data space.

    Guidance is applied only when cfg_scale > 1, as the reference's sample_ddp.py. `key` is one key
    (split into the key of x_T and the key of the per-step noise), or one key per sample (shape
    (B, 2) raw keys): then sample b's x_T and step noise come from its own key only, so a sample is
    the same whatever batch or device count computes it.
    """
    model = DiT(config)
    channels = guidance_channels(cfg_mode, config.in_channels)

    @jax.jit
    def run(params, labels, key):
        def class_model_fn(x, t, y):
            return model.apply({"params": params}, x, t, y)

        if cfg_scale > 1.0:
            model_fn = guided_model_fn(class_model_fn, labels, config.null_class, cfg_scale, channels)
        else:
            model_fn = lambda x, t: class_model_fn(x, t, labels)  # noqa: E731
        shape = (labels.shape[0], config.input_size, config.input_size, config.in_channels)
        if key.ndim == 2:  # per-sample raw keys
            pairs = jax.vmap(jax.random.split)(key)  # (B, 2, 2): x_T key, step-noise key
            x_T = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(pairs[:, 0])

            def noise_fn(_, i, x):
                return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(
                    pairs[:, 1])
            x = sample_loop(diffusion, model_fn, x_T, key, sampler=sampler, eta=eta, noise_fn=noise_fn,
                            clip_denoised=False)
        else:
            init_key, step_key = jax.random.split(key)
            x_T = jax.random.normal(init_key, shape, jnp.float32)
            x = sample_loop(diffusion, model_fn, x_T, step_key, sampler=sampler, eta=eta, clip_denoised=False)
        return x[..., : config.in_channels]

    return run


def to_uint8_device(x: jax.Array) -> jax.Array:
    """`to_uint8` on device, so that hosts fetch a quarter of the bytes of float32 images."""
    return jnp.clip(127.5 * x.astype(jnp.float32) + 128.0, 0, 255).astype(jnp.uint8)


def batch_devices(sharding: jax.sharding.Sharding) -> int:
    """How many pieces `sharding` cuts a leading (batch) dimension into."""
    n = sharding.mesh.size
    return n // sharding.shard_shape((n,))[0]


def make_batch_sampler(config: DiTConfig, diffusion: GaussianDiffusion, sharding: jax.sharding.Sharding,
                       cfg_scale: float = 1.0, cfg_mode: str = "reference", sampler: str = "ddpm", eta: float = 0.0,
                       vae_config=None, uint8: bool = False):
    """`fn(params, labels, key, vae_params=None) -> samples`: one jitted sampler for a whole run, on every
    device of every host.

    labels: a host array of N labels, the same on every host. The batch is split over `sharding`
    (its leading dimension) and padded to a multiple of the devices it is split over; the result is a
    global jax.Array of N' >= N samples (drop the padding after fetching it with `fetch`). `key`: one key,
    or per-sample raw keys (N, 2) as `make_sampler`. Latent samples are decoded with the VAE when
    `vae_config` is given, and converted to uint8 on device with `uint8`. Built once, it compiles once
    per batch size however often it is called.
    """
    from dit_jax.models.vae import decode_latents
    run = make_sampler(config, diffusion, cfg_scale, cfg_mode, sampler, eta)
    divisor = batch_devices(sharding)

    @partial(jax.jit, out_shardings=sharding)
    def produce(params, vae_params, labels, key):
        x = run(params, labels, key)
        if vae_config is not None:
            x = decode_latents(vae_params, x, vae_config)
        return to_uint8_device(x) if uint8 else x

    def put(a: np.ndarray) -> jax.Array:
        a = np.concatenate([a, np.repeat(a[-1:], -len(a) % divisor, axis=0)])
        return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])

    whole = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())

    def sample(params, labels: np.ndarray, key, vae_params=None) -> jax.Array:
        key = np.asarray(key)  # the same on every host: placed as one global array
        key = put(key) if key.ndim == 2 else jax.make_array_from_callback(key.shape, whole, lambda i: key[i])
        return produce(params, vae_params, put(np.asarray(labels, np.int32)), key)

    return sample


def fetch(x: jax.Array, n: int | None = None) -> np.ndarray:
    """A global array (possibly spanning other hosts' devices) as one host array on every host, first n rows."""
    from jax.experimental import multihost_utils
    out = np.asarray(multihost_utils.process_allgather(x, tiled=True)) if jax.process_count() > 1 else np.asarray(x)
    return out if n is None else out[:n]


def sample_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    """Raw per-sample keys fold_in(PRNGKey(seed), i): sample i depends only on (seed, i)."""
    base = jax.random.PRNGKey(seed)
    return np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32)))


def sample_labels(seed: int, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Uniform random labels in [0, num_classes), label i from (seed, i) only."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), 2**31 - 1)
    return np.asarray(jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(base, i), (), 0, num_classes))(
        jnp.asarray(indices, jnp.uint32)))


def params_fingerprint(params) -> list[float]:
    """Per-leaf (sum, sum of squares) of the weights: cheap on device, and different for other weights."""
    sums = jax.jit(lambda p: [jnp.stack([jnp.sum(a, dtype=jnp.float32), jnp.sum(jnp.square(a.astype(jnp.float32)))])
                              for a in jax.tree.leaves(p)])(params)
    return [round(float(v), 6) for pair in jax.device_get(sums) for v in pair]


def _manifest(shard_dir) -> dict | None:
    path = storage.resolve(storage.join(shard_dir, MANIFEST))
    return json.loads(path.read_text()) if path.exists() else None


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
        todo = np.asarray([any(_shard_name(s, p, jax.process_count()) not in done for p in range(jax.process_count()))
                           for s in range(num_shards)], np.int32)
    if jax.process_count() > 1:
        todo = np.asarray(multihost_utils.broadcast_one_to_all(todo))
    return np.flatnonzero(todo)


def _shard_name(shard: int, process: int, processes: int) -> str:
    return f"shard_{shard:06d}_{process}-of-{processes}.npz"


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def sample_npz(run, params, num_samples: int, num_classes: int, seed: int, out_path: str,
               batch_per_device: int = 32, vae=None, settings: dict | None = None, log=print) -> str:
    """Sample `num_samples` images into the ADM .npz (`arr_0` uint8 NHWC, exactly N; `labels`).

    The work is split into shards of one global batch (batch_per_device x all devices of all
    hosts); each host writes the rows its devices hold as soon as a batch finishes, under
    OUT.shards/, so an interrupted run resumes without redoing them. OUT.shards/manifest.json records
    what made the shards (`settings`: weights, guidance, steps, sampler...; the weights' fingerprint,
    the seed and the shard layout): a rerun with anything else starts over. `run` is a
    `make_batch_sampler(..., uint8=True)` function over all devices; `vae` is its (VAE params, VAEConfig)
    for latent models, uploaded once. Process 0 writes OUT.
    """
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    vae_params = jax.device_put(vae[0], NamedSharding(mesh, P())) if vae is not None else None
    batch = batch_per_device * jax.device_count()
    shard_dir = out_path + ".shards"
    num_shards = -(-num_samples // batch)
    manifest = dict(settings or {}, seed=seed, num_classes=num_classes, weights_fingerprint=params_fingerprint(params),
                    batch_per_device=batch_per_device, device_count=jax.device_count(),
                    process_count=jax.process_count())
    todo = _plan_shards(shard_dir, manifest, num_shards, log)
    log(f"sampling {num_samples} images in {num_shards} shards of {batch} on {jax.device_count()} devices; "
        f"{num_shards - len(todo)} shards already done")
    t0 = time.time()
    for count, s in enumerate(todo, 1):
        idx = np.arange(s * batch, (s + 1) * batch)
        labels = sample_labels(seed, idx, num_classes)
        out = run(params, labels, sample_keys(seed, idx), vae_params)
        # Each host writes the rows its own devices hold: nothing crosses hosts.
        rows = {}
        for piece in out.addressable_shards:
            start = piece.index[0].start or 0
            rows.setdefault(start, np.asarray(piece.data))
        starts = sorted(rows)
        local_idx = np.concatenate([np.arange(a, a + len(rows[a])) for a in starts])
        storage.write_bytes_atomic(
            storage.join(shard_dir, _shard_name(s, jax.process_index(), jax.process_count())),
            _npz_bytes(images=np.concatenate([rows[a] for a in starts]), labels=labels[local_idx],
                       index=idx[local_idx]))
        rate = count * batch / (time.time() - t0)
        log(f"shard {count}/{len(todo)}: {rate:.2f} img/s, ETA {(len(todo) - count) * batch / rate:.0f} s")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("dit_jax sample_npz shards")
    if jax.process_index() == 0:
        images, labels = _assemble(shard_dir, num_shards, num_samples)
        storage.write_bytes_atomic(out_path, _npz_bytes(arr_0=images, labels=labels))
        log(f"wrote {out_path}: arr_0 {images.shape} uint8, labels {labels.shape}")
    return out_path


def _assemble(shard_dir, num_shards: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first num_samples images and labels of all hosts' shard files, in sample order."""
    images, labels, index = [], [], []
    processes = jax.process_count()
    for s in range(num_shards):
        for p in range(processes):
            with storage.resolve(storage.join(shard_dir, _shard_name(s, p, processes))).open("rb") as f:
                z = np.load(io.BytesIO(f.read()))
                images.append(z["images"]), labels.append(z["labels"]), index.append(z["index"])
    order = np.argsort(np.concatenate(index), kind="stable")
    index = np.concatenate(index)[order]
    if not np.array_equal(index[:num_samples], np.arange(num_samples)):
        raise RuntimeError(f"the shards in {shard_dir} do not hold samples 0..{num_samples - 1} exactly once")
    return np.concatenate(images)[order][:num_samples], np.concatenate(labels)[order][:num_samples]


def to_uint8(x) -> np.ndarray:
    """[-1, 1] images -> uint8 as the reference: clip(127.5 x + 128, 0, 255), truncated."""
    return np.clip(127.5 * np.asarray(x, np.float32) + 128.0, 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows * (H + pad) + pad, ...) uint8 grid image."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def save_grid(images: np.ndarray, path: str, nrow: int | None = None, upscale: int = 1) -> None:
    """Write the grid as a PNG file, local or in a bucket."""
    import io

    from PIL import Image

    from dit_jax import storage
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    png = io.BytesIO()
    img.save(png, format="PNG")
    storage.write_bytes_atomic(path, png.getvalue())
