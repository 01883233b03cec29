"""Class-conditional sampling with a DiT: the jitted sampler over a batch, one mesh-aware sampler for a
whole run, and the per-sample keys and labels that make a sample independent of the batch it is in."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.gaussian import GaussianDiffusion, respace
from dit_jax.diffusion.samplers import CFG_MODES, SAMPLERS, guidance_channels, guided_model_fn, sample_loop
from dit_jax.models.dit import DiT, DiTConfig


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How to sample: what `dit-jax sample`, grids, evaluations and the benchmark all choose from."""
    sampler: str = "ddpm"             # ancestral DDPM or DDIM over the respaced diffusion
    steps: str = "250"                # respacing: "250", "ddim50", "10,15,20"
    cfg_scale: float = 1.0            # guidance only above 1, as the reference
    cfg_mode: str = "reference"       # "reference": the first 3 channels; "all": every channel
    eta: float = 0.0                  # DDIM's noise

    @classmethod
    def from_config(cls, section) -> "SamplerSettings":
        """From a config section with sampler/steps/cfg_scale/cfg_mode (config.sample, an evaluation)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (str(v) if k == "steps" else v) for k, v in dict(section).items() if k in fields})

    def problems(self) -> list[str]:
        out = []
        if self.sampler not in SAMPLERS:
            out.append(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.cfg_mode not in CFG_MODES:
            out.append(f"cfg_mode must be one of {CFG_MODES}, got {self.cfg_mode!r}")
        return out

    def describe(self) -> str:
        return f"{self.steps} {self.sampler} steps, cfg {self.cfg_scale} ({self.cfg_mode})"


def make_sampler(model: DiTConfig, diffusion: GaussianDiffusion, settings: SamplerSettings):
    """A jitted `fn(params, labels, key) -> samples (B, H, W, C)` in the model's data space, on whatever
    devices its arguments are; `diffusion` is the run's whole (training) diffusion, respaced here.

    Guidance is applied only when cfg_scale > 1, as the reference's sample_ddp.py. `key` is one key
    (split into the key of x_T and the key of the per-step noise), or one key per sample (shape
    (B, 2) raw keys): then sample b's x_T and step noise come from its own key only, so a sample is
    the same whatever batch or device count computes it.
    """
    problems = settings.problems()
    if problems:
        raise ValueError("; ".join(problems))
    dit = DiT(model)
    channels = guidance_channels(settings.cfg_mode, model.in_channels)
    spaced = respace(diffusion, settings.steps)

    @jax.jit
    def run(params, labels, key):
        def class_model_fn(x, t, y):
            return dit.apply({"params": params}, x, t, y)

        if settings.cfg_scale > 1.0:
            model_fn = guided_model_fn(class_model_fn, labels, model.null_class, settings.cfg_scale, channels)
        else:
            model_fn = lambda x, t: class_model_fn(x, t, labels)  # noqa: E731
        shape = (labels.shape[0], model.input_size, model.input_size, model.in_channels)
        if key.ndim == 2:  # per-sample raw keys
            pairs = jax.vmap(jax.random.split)(key)  # (B, 2, 2): x_T key, step-noise key
            x_T = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(pairs[:, 0])

            def noise_fn(_, i, x):
                return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(
                    pairs[:, 1])
        else:
            init_key, key = jax.random.split(key)
            x_T = jax.random.normal(init_key, shape, jnp.float32)
            noise_fn = None
        x = sample_loop(spaced, model_fn, x_T, key, sampler=settings.sampler, eta=settings.eta, noise_fn=noise_fn,
                        clip_denoised=False)
        return x[..., : model.in_channels]

    return run


def to_uint8_device(x: jax.Array) -> jax.Array:
    """`to_uint8` on device, so that hosts fetch a quarter of the bytes of float32 images."""
    return jnp.clip(127.5 * x.astype(jnp.float32) + 128.0, 0, 255).astype(jnp.uint8)


def batch_devices(sharding: jax.sharding.Sharding) -> int:
    """How many pieces `sharding` cuts a leading (batch) dimension into."""
    n = sharding.mesh.size
    return n // sharding.shard_shape((n,))[0]


def build_sampler(run, settings: SamplerSettings, *, sharding: jax.sharding.Sharding | None = None,
                  uint8: bool = False):
    """`fn(params, labels, key, vae_params=None) -> samples`: the one sampler builder, for a `Run`
    (train/run.py): its model, its diffusion, its VAE for latent runs, the batch split over its mesh.

    labels: a host array of N labels, the same on every host. The batch is split over `sharding`
    (default: the mesh's data x fsdp) and padded to a multiple of the devices it is split over; the
    result is a global jax.Array of N' >= N samples (drop the padding after fetching it with `fetch`).
    `key`: one key, or per-sample raw keys (N, 2) as `make_sampler`. Latent samples are decoded with
    the run's VAE (pass its params as vae_params), and converted to uint8 on device with `uint8`.
    Built once, it compiles once per batch size however often it is called.
    """
    from dit_jax.models.vae import decode_latents
    from dit_jax.parallel.sharding import batch_sharding
    sharding = sharding or batch_sharding(run.mesh)
    sample_one = make_sampler(run.model, run.objective, settings)
    decoder = run.decoder
    divisor = batch_devices(sharding)

    @partial(jax.jit, out_shardings=sharding)
    def produce(params, vae_params, labels, key):
        x = sample_one(params, labels, key)
        if decoder is not None:
            x = decode_latents(vae_params, x, decoder.config)
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
