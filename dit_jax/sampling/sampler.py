"""Class-conditional sampling with a DiT: the jitted sampler over a batch, one mesh-aware sampler for a
whole run, and the per-sample keys and labels that make a sample independent of the batch it is in."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.gaussian import GaussianDiffusion
from dit_jax.diffusion.samplers import guidance_channels, guided_model_fn, sample_loop
from dit_jax.models.dit import DiT, DiTConfig

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
