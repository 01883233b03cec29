"""Class-conditional sampling with a DiT: the jitted sampler over a batch, one mesh-aware sampler for a
whole run, and the per-sample keys and labels that make a sample independent of the batch it is in."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.gaussian import GaussianDiffusion, respace
from dit_jax.diffusion.ancestral import CFG_MODES, guidance_channels, guided_model_fn, interval_mask, sample_loop
from dit_jax.diffusion.solvers import SOLVERS, SPACINGS, solve
from dit_jax.exit_codes import BadInput
from dit_jax.meanflow.objective import MeanFlow
from dit_jax.meanflow.sampler import sample as meanflow_sample
from dit_jax.models.dit import DiT, DiTConfig
from dit_jax.sampling.autoguidance import autoguided_fn
from dit_jax.transport import integrators as sit
from dit_jax.transport.guidance import split_learned_sigma
from dit_jax.transport.repa import RepaFlow
from dit_jax.transport.transport import Transport
from dit_jax.run import Run

# By objective: the reference's respaced ancestral DDPM and DDIM, the few-step solvers (diffusers'
# semantics); SiT's ODE (euler, heun, dopri5) and SDE samplers.
DDPM_SAMPLERS = ("ddpm", "ddim") + tuple(s for s in SOLVERS if s != "ddim")
SIT_SAMPLERS = ("euler", "heun", "dopri5", "sde-euler", "sde-heun")
# REPA's samplers.py (transport/repa_samplers.py): its runs' time runs the other way (t = 0 data).
REPA_SAMPLERS = ("repa-sde", "repa-euler", "repa-heun")
MEANFLOW_SAMPLERS = ("meanflow",)  # 1-NFE or k steps of the average velocity (steps: the NFE)
DEFAULT_SAMPLER = {"ddpm": "ddpm", "sit": "heun", "repa": "repa-sde", "meanflow": "meanflow"}
SAMPLERS = {"ddpm": DDPM_SAMPLERS, "sit": SIT_SAMPLERS, "repa": REPA_SAMPLERS, "meanflow": MEANFLOW_SAMPLERS}


def objective_kind(objective) -> str:
    if isinstance(objective, MeanFlow):
        return "meanflow"
    return "sit" if isinstance(objective, Transport) else "repa" if isinstance(objective, RepaFlow) else "ddpm"


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How to sample: what `dit-jax sample`, grids, evaluations and the benchmark all choose from."""
    sampler: str = ""                 # "": the objective's default (DEFAULT_SAMPLER)
    steps: str = "250"                # ddpm/ddim: a respacing ("250", "ddim50"); otherwise a step count
    cfg_scale: float = 1.0            # guidance only above 1, as the reference
    cfg_mode: str = "reference"       # "reference": the first 3 channels; "all": every channel
    eta: float = 0.0                  # DDIM's noise
    cfg_interval: tuple | None = None  # guidance only at noise levels s in [lo, hi] (s = 1 pure noise)
    spacing: str = ""                 # the solvers' timestep spacing ("" linspace; with "ddim": diffusers' DDIM)
    # SiT's samplers (config.transport): dopri5's tolerances, the SDE's diffusion and last step.
    atol: float = 1e-6
    rtol: float = 1e-3
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    last_step: str | None = "Mean"
    last_step_size: float = 0.04
    timestep_shift: float = 0.0       # LightningDiT's shift of the euler/heun ODE grid (0: off)

    @classmethod
    def from_config(cls, section, transport=None) -> "SamplerSettings":
        """From a config section with sampler/steps/cfg_scale/cfg_mode/... (config.sample, an evaluator),
        SiT's options from config.transport."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(section).items() if k in fields}
        if transport is not None:
            values.update({k: v for k, v in dict(transport).items() if k in fields})
        if "steps" in values:
            values["steps"] = str(values["steps"])
        interval = values.get("cfg_interval")
        values["cfg_interval"] = None if interval is None or tuple(interval) == (0.0, 1.0) else tuple(interval)
        if values.get("last_step") in ("", "none", "None"):
            values["last_step"] = None
        return cls(**values)

    def resolved(self, objective) -> str:
        return self.sampler or DEFAULT_SAMPLER[objective_kind(objective)]

    def problems(self, objective) -> list[str]:
        """What is wrong with these settings for `objective` (empty when fine)."""
        kind, name = objective_kind(objective), self.resolved(objective)
        allowed = SAMPLERS[kind]
        if name not in allowed:
            owner = [k for k, names in SAMPLERS.items() if name in names]
            label = {"ddpm": "DDPM", "sit": "SiT", "repa": "REPA", "meanflow": "MeanFlow"}
            other = f"; it is a sampler of {label[owner[0]]} models (objective {owner[0]!r})" if owner else ""
            return [f"sampler must be one of {allowed} for objective {kind!r} (or '' for {DEFAULT_SAMPLER[kind]}), "
                    f"got {name!r}{other}"]
        out = []
        if self.cfg_mode not in CFG_MODES:
            out.append(f"cfg_mode must be one of {CFG_MODES}, got {self.cfg_mode!r}")
        if self.cfg_interval is not None:
            lo, hi = self.cfg_interval
            if not 0.0 <= lo <= hi <= 1.0:
                out.append(f"cfg_interval must be (lo, hi) with 0 <= lo <= hi <= 1, got {self.cfg_interval}")
        if self.spacing and self.spacing not in SPACINGS:
            out.append(f"spacing must be one of {SPACINGS} (or '' for linspace), got {self.spacing!r}")
        if self.timestep_shift < 0 or (self.timestep_shift and (kind != "sit" or name.startswith("sde-"))):
            out.append(f"timestep_shift ({self.timestep_shift}) must be >= 0 and shifts the grid of SiT's ODE samplers "
                       f"(euler, heun; dopri5 ignores it): not used by {name!r}")
        if kind in ("sit", "repa", "meanflow") or name in SOLVERS:
            low = 2 if kind in ("sit", "repa") else 1
            if not self.steps.isdigit() or int(self.steps) < low:
                out.append(f"steps must be an integer >= {low} for the {name} sampler, got {self.steps!r}")
            elif kind == "ddpm" and int(self.steps) > objective.num_timesteps:
                out.append(f"steps must be at most the diffusion's {objective.num_timesteps} timesteps, "
                           f"got {self.steps}")
        return out

    def describe(self) -> str:
        interval = f", interval {self.cfg_interval}" if self.cfg_interval else ""
        if self.sampler == "meanflow":
            return f"{self.steps} meanflow steps (NFE {self.steps}; guidance trained in, no cfg applied)"
        return f"{self.steps} {self.sampler or 'default'} steps, cfg {self.cfg_scale} ({self.cfg_mode}{interval})"


def _sit_interval_fn(guided, plain, interval):
    """SiT's noise level is 1 - t: guide inside the interval, the plain conditional output outside."""
    lo, hi = interval

    def model_fn(x, t):
        s = 1.0 - t
        inside = ((lo <= s) & (s <= hi)).reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(inside, guided(x, t), plain(x, t))
    return model_fn


def sample_from(objective, model_fn, x_T, key, settings: SamplerSettings, noise_fn=None) -> jax.Array:
    """Run the sampler `settings` name on `objective` from x_T; model_fn(x, t) is the (guided) network."""
    name = settings.resolved(objective)
    if isinstance(objective, MeanFlow):  # model_fn(x, t, h): the average velocity over [t - h, t]
        return meanflow_sample(lambda z, t, h, _: model_fn(z, t, h), x_T, None, int(settings.steps))
    if isinstance(objective, Transport):
        if name.startswith("sde-"):
            return sit.sample_sde(objective, model_fn, x_T, key, method=name[4:], num_steps=int(settings.steps),
                                  diffusion_form=settings.diffusion_form, diffusion_norm=settings.diffusion_norm,
                                  last_step=settings.last_step, last_step_size=settings.last_step_size,
                                  noise_fn=noise_fn)
        return sit.sample_ode(objective, model_fn, x_T, method=name, num_steps=int(settings.steps),
                              atol=settings.atol, rtol=settings.rtol, timestep_shift=settings.timestep_shift)
    if name in SOLVERS and (name != "ddim" or settings.spacing):
        return solve(objective.alphas_cumprod, model_fn, x_T, sampler=name, steps=int(settings.steps),
                     spacing=settings.spacing or "linspace", eta=settings.eta, key=key)
    return sample_loop(respace(objective, settings.steps), model_fn, x_T, key, sampler=name, eta=settings.eta,
                       noise_fn=noise_fn, clip_denoised=False)


def _network(config: DiTConfig, params, is_sit: bool, channels: int):
    """class_model_fn(x, t, y) of one DiT: SiT's forward drops the learned-sigma half; DDPM's samplers
    read it (or drop it themselves)."""
    dit = DiT(config)

    def class_model_fn(x, t, y):
        out = dit.apply({"params": params}, x, t, y)
        return split_learned_sigma(out, channels) if is_sit else out
    return class_model_fn


def guided_network(model: DiTConfig, objective, settings: SamplerSettings, params, labels,
                   guide: DiTConfig | None = None, guide_params=None):
    """The model_fn(x, t) a sampler integrates: the network on `labels`; with classifier-free guidance
    when cfg_scale > 1 (the reference's rule); or, with a `guide` model, autoguidance when cfg_scale != 1
    (EDM2's rule). cfg_interval limits either to noise levels in [lo, hi]."""
    if isinstance(objective, MeanFlow):
        return _meanflow_network(model, settings, params, labels, guide, guide_params)
    is_sit = isinstance(objective, Transport)
    class_model_fn = _network(model, params, is_sit, model.in_channels)
    interval = settings.cfg_interval

    def plain(x, t):
        return class_model_fn(x, t, labels)
    if guide is not None:
        if settings.cfg_scale == 1.0:
            return plain
        guide_fn = _network(guide, guide_params, is_sit, model.in_channels)
        inside = None
        if interval is not None:
            mask = _sit_inside(interval) if is_sit else interval_mask(interval, objective.num_timesteps)
            inside = lambda x, t: mask(t)  # noqa: E731
        return autoguided_fn(plain, lambda x, t: guide_fn(x, t, labels), settings.cfg_scale, model.in_channels,
                             inside=inside)
    if settings.cfg_scale <= 1.0:
        return plain
    channels = guidance_channels(settings.cfg_mode, model.in_channels)
    if is_sit:
        model_fn = guided_model_fn(class_model_fn, labels, model.null_class, settings.cfg_scale, channels)
        return model_fn if interval is None else _sit_interval_fn(model_fn, plain, interval)
    return guided_model_fn(class_model_fn, labels, model.null_class, settings.cfg_scale, channels,
                           interval=interval, num_timesteps=objective.num_timesteps)


def _meanflow_network(model: DiTConfig, settings: SamplerSettings, params, labels, guide, guide_params):
    """MeanFlow's u(x, t, h) on `labels`: its classifier-free guidance is trained in, so sampling applies
    none; with a `guide` model, autoguidance on u when cfg_scale != 1."""
    def network(config, p):
        dit = DiT(config)
        return lambda x, t, h: dit.apply({"params": p}, x, t, labels, h=h)
    main = network(model, params)
    if guide is None or settings.cfg_scale == 1.0:
        return main
    return autoguided_fn(main, network(guide, guide_params), settings.cfg_scale, model.in_channels)


def _sit_inside(interval):
    lo, hi = interval
    return lambda t: (lo <= 1.0 - t) & (1.0 - t <= hi)


def make_sampler(model: DiTConfig, objective: GaussianDiffusion | Transport, settings: SamplerSettings,
                 guide: DiTConfig | None = None):
    """A jitted `fn(params, labels, key, guide_params=None) -> samples (B, H, W, C)` in the model's data
    space, on whatever devices its arguments are. `objective`: the run's whole (training) diffusion,
    respaced here, or SiT's transport. `guide`: the config of an autoguidance model (its params are
    `guide_params`), in the same program as the main model.

    Guidance is applied only when cfg_scale > 1, as the reference's sample_ddp.py (autoguidance: when
    cfg_scale != 1, as EDM2). `key` is one key
    (split into the key of x_T and the key of the per-step noise), or one key per sample (shape
    (B, 2) raw keys): then sample b's x_T and step noise come from its own key only, so a sample is
    the same whatever batch or device count computes it.
    """
    problems = settings.problems(objective)
    if problems:
        raise ValueError("; ".join(problems))
    is_meanflow = isinstance(objective, MeanFlow)
    if model.second_time_input != is_meanflow:
        raise BadInput(f"a model {'with' if model.second_time_input else 'without'} MeanFlow's second time input "
                       f"cannot sample with objective {objective_kind(objective)!r}: MeanFlow's samplers need a "
                       "MeanFlow model (second_time_input=True), and it only samples with them")
    if isinstance(objective, RepaFlow):
        if guide is not None:
            raise BadInput("--guide: REPA's samplers (repa-sde, repa-euler, repa-heun) take no autoguidance model; "
                           "drop --guide, or sample the run with --objective sit")
        return _repa_sampler(model, objective, settings)

    @jax.jit
    def run(params, labels, key, guide_params=None):
        model_fn = guided_network(model, objective, settings, params, labels, guide, guide_params)
        shape = (labels.shape[0], model.input_size, model.input_size, model.in_channels)
        if key.ndim == 2:  # per-sample raw keys
            pairs = jax.vmap(jax.random.split)(key)  # (B, 2, 2): x_T key, step-noise key
            x_T = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(pairs[:, 0])

            def noise_fn(_, i, x):
                return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], x.dtype))(
                    pairs[:, 1])
            key = pairs[0, 1]  # only DDIM with eta > 0 on the solver path draws from one key
        else:
            init_key, key = jax.random.split(key)
            x_T = jax.random.normal(init_key, shape, jnp.float32)
            noise_fn = None
        x = sample_from(objective, model_fn, x_T, key, settings, noise_fn)
        return x[..., : model.in_channels]

    return run


def _repa_sampler(model: DiTConfig, objective: RepaFlow, settings: SamplerSettings):
    """make_sampler for REPA runs: REPA's samplers exactly (guidance on every channel, only inside
    settings.cfg_interval, which REPA states in its own t: guidance_low <= t <= guidance_high)."""
    from dit_jax.transport import repa_samplers
    dit, name = DiT(model), settings.resolved(objective)
    lo, hi = settings.cfg_interval or (0.0, 1.0)
    kw = dict(num_steps=int(settings.steps), cfg_scale=settings.cfg_scale, guidance_low=lo, guidance_high=hi,
              null_label=model.null_class)

    @jax.jit
    def run(params, labels, key, guide_params=None):  # no guide: make_sampler refuses one for REPA
        def model_fn(x, t, y):
            return split_learned_sigma(dit.apply({"params": params}, x, t, y), model.in_channels)
        shape = (labels.shape[0], model.input_size, model.input_size, model.in_channels)
        if key.ndim == 2:  # per-sample raw keys: sample b depends on its own key only
            pairs = jax.vmap(jax.random.split)(key)
            x_T = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(pairs[:, 0])

            def noise_fn(i, x):
                return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:], jnp.float32))(
                    pairs[:, 1])
        else:
            init_key, key = jax.random.split(key)
            x_T = jax.random.normal(init_key, shape, jnp.float32)
            noise_fn = None
        if name == "repa-sde":
            x = repa_samplers.euler_maruyama_sampler(model_fn, x_T, labels, key, path=objective.path,
                                                     noise_fn=noise_fn, **kw)
        else:
            x = repa_samplers.euler_sampler(model_fn, x_T, labels, heun=name == "repa-heun", **kw)
        return x.astype(jnp.float32)

    return run


def to_uint8_device(x: jax.Array) -> jax.Array:
    """`to_uint8` on device, so that hosts fetch a quarter of the bytes of float32 images."""
    return jnp.clip(127.5 * x.astype(jnp.float32) + 128.0, 0, 255).astype(jnp.uint8)


def batch_devices(sharding: jax.sharding.Sharding) -> int:
    """How many pieces `sharding` cuts a leading (batch) dimension into."""
    n = sharding.mesh.size
    return n // sharding.shard_shape((n,))[0]


class NonFiniteSamples(BadInput):
    """Samples held NaN/Inf values: the weights or the settings cannot make an image (exit 2)."""


def build_sampler(run: Run, settings: SamplerSettings, *, sharding: jax.sharding.Sharding | None = None,
                  uint8: bool = False, finite_check: bool = False, guide: DiTConfig | None = None):
    """`fn(params, labels, key, vae_params=None, guide_params=None) -> samples`: the one sampler builder,
    for a `Run` (dit_jax/run.py): its model, its diffusion, its VAE for latent runs, the batch split over
    its mesh.

    labels: a host array of N labels, the same on every host. The batch is split over `sharding`
    (default: the mesh's data x fsdp) and padded to a multiple of the devices it is split over; the
    result is a global jax.Array of N' >= N samples (drop the padding after fetching it with `fetch`).
    `key`: one key, or per-sample raw keys (N, 2) as `make_sampler`. Latent samples are decoded with
    the run's VAE (pass its params as vae_params), and converted to uint8 on device with `uint8`.
    Built once, it compiles once per batch size however often it is called. With `finite_check`, a
    call whose samples hold NaN/Inf raises NonFiniteSamples (uint8 would silently turn them into black).
    `guide`: an autoguidance model's config; pass its params to `fn` as guide_params (placed as the main
    params are).
    """
    from dit_jax.models.vae import decode_latents
    from dit_jax.parallel.sharding import batch_sharding
    sharding = sharding or batch_sharding(run.mesh)
    sample_one = make_sampler(run.model, run.objective, settings, guide)  # checks settings against the objective
    decoder = run.decoder
    divisor = batch_devices(sharding)
    whole = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())

    @partial(jax.jit, out_shardings=(sharding, whole))
    def produce(params, vae_params, labels, key, guide_params):
        x = sample_one(params, labels, key, guide_params)
        if decoder is not None:
            x = decode_latents(vae_params, x, decoder.config)
        bad = jnp.sum(~jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)) if finite_check else 0
        return (to_uint8_device(x) if uint8 else x), bad

    def put(a: np.ndarray) -> jax.Array:
        a = np.concatenate([a, np.repeat(a[-1:], -len(a) % divisor, axis=0)])
        return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])

    def sample(params, labels: np.ndarray, key, vae_params=None, guide_params=None) -> jax.Array:
        if (guide is None) != (guide_params is None):
            raise ValueError("guide_params go with a sampler built with a guide model, and only with one")
        key = np.asarray(key)  # the same on every host: placed as one global array
        key = put(key) if key.ndim == 2 else jax.make_array_from_callback(key.shape, whole, lambda i: key[i])
        x, bad = produce(params, vae_params, put(np.asarray(labels, np.int32)), key, guide_params)
        if finite_check and int(bad):  # one integer, fetched where the samples are fetched anyway
            raise NonFiniteSamples(
                f"{int(bad)} of {x.shape[0]} samples hold NaN/Inf values, so no image can be made of them and "
                f"none is written ({settings.describe()}): the weights are damaged or diverged, or the settings "
                "(e.g. --cfg-scale) are out of range; check the weights, or lower --cfg-scale")
        return x

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
