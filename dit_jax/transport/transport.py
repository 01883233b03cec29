"""SiT's transport: which path, what the network predicts, the training loss and the sampling field.

`Transport` is the configuration (a frozen, hashable dataclass, so it can be a static argument of
a jitted function). `training_losses` is SiT's `Transport.training_losses`; `velocity_fn` and
`score_fn` turn a network `model_fn(x_t, t) -> output` into the probability-flow velocity
(SiT's `get_drift`) and the score (SiT's `get_score`), whatever the network predicts.

The network's time input is the continuous t in [0, 1] itself, as SiT feeds it to the DiT's
sinusoidal timestep embedder (no x1000 scaling).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dit_jax.transport.paths import PATHS, Linear, expand_t_like_x, make_path

PREDICTIONS = ("velocity", "score", "noise")
LOSS_WEIGHTS = (None, "velocity", "likelihood")

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Transport:
    """SiT's `create_transport(path_type, prediction, loss_weight, train_eps, sample_eps)`.

    eps keeps the time interval off the ends where a path's conversions divide by zero. Defaults,
    as SiT: velocity on Linear/GVP is finite everywhere and uses [0, 1] (SiT sets both eps to 0 there
    even when given, and so do we); score/noise on Linear/GVP: 1e-3 for both; VP: train 1e-5,
    sample 1e-3. One difference: each eps here falls back to its default on its own, where SiT
    decides both on `train_eps is None` (it drops a sample_eps given without a train_eps, and leaves
    sample_eps None, which fails later, for VP with only train_eps given).
    """
    path: str = "Linear"
    prediction: str = "velocity"
    loss_weight: str | None = None
    train_eps: float | None = None
    sample_eps: float | None = None
    # LightningDiT's options (hustvl/LightningDiT transport/; docs/lightningdit.md):
    use_lognorm: bool = False      # training t = sigmoid(n), n ~ N(0, 1) (logit-normal), instead of U[t0, t1]
    use_cosine_loss: bool = False  # add the mean over pixels of 1 - cos(out, u_t) along channels, weight 1

    def __post_init__(self):
        _check_choice("path", self.path, PATHS)
        _check_choice("prediction", self.prediction, PREDICTIONS)
        _check_choice("loss_weight", self.loss_weight, LOSS_WEIGHTS)
        for name in ("train_eps", "sample_eps"):
            eps = getattr(self, name)
            if eps is not None and not 0 <= eps < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {eps!r}")
        if self.use_cosine_loss and self.prediction != "velocity":
            raise ValueError(f"use_cosine_loss compares velocities: it needs prediction 'velocity', got "
                             f"{self.prediction!r}")

    @property
    def path_sampler(self) -> Linear:
        return make_path(self.path)

    def eps(self, training: bool) -> float:
        """The resolved train_eps (training=True) or sample_eps."""
        if self.path in ("Linear", "GVP") and self.prediction == "velocity":
            return 0.0
        given = self.train_eps if training else self.sample_eps
        if given is not None:
            return float(given)
        return 1e-5 if (self.path == "VP" and training) else 1e-3

    def time_interval(self, training: bool, *, sde: bool = False, diffusion_form: str = "SBDM",
                      last_step_size: float = 0.0, reverse: bool = False) -> tuple[float, float]:
        """(t0, t1): SiT's `check_interval`. Training draws t ~ U[t0, t1]; samplers integrate t0 -> t1.

        VP stops at 1 - eps (or before the SDE's last step); Linear/GVP keep t0 = 0 unless the network
        does not predict velocity (or the SDE uses the SBDM diffusion, which is infinite at t = 0).
        """
        eps = self.eps(training)
        t0, t1 = 0.0, 1.0
        end = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if self.path == "VP":
            t1 = end
        elif self.prediction != "velocity" or sde:
            t0 = eps if (diffusion_form == "SBDM" and sde) or self.prediction != "velocity" else 0.0
            t1 = end
        if reverse:
            t0, t1 = 1 - t0, 1 - t1
        return t0, t1


def mean_flat(x: jax.Array) -> jax.Array:
    """Mean over every non-batch dimension."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def logit_normal_time(normal: jax.Array) -> jax.Array:
    """LightningDiT's lognorm time from standard normal draws: 1 / (1 + exp(-n)), in float32 (the reference
    draws n with scipy and takes this sigmoid in float64 before casting to float32: within 2.4e-7 of it)."""
    n = jnp.asarray(normal, jnp.float32)
    return 1 / (1 + jnp.exp(-n))


def sample_time(transport: Transport, key: jax.Array, batch: int) -> jax.Array:
    """Training times in [t0, t1]: SiT's uniform draw, or LightningDiT's logit-normal one (use_lognorm),
    scaled to the interval as LightningDiT does."""
    t0, t1 = transport.time_interval(training=True)
    if transport.use_lognorm:
        u = logit_normal_time(jax.random.normal(key, (batch,), jnp.float32))
    else:
        u = jax.random.uniform(key, (batch,), jnp.float32)
    return u * (t1 - t0) + t0


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """torch.nn.functional.cosine_similarity along the last (channel) axis, each squared norm clamped at eps^2."""
    na = jnp.maximum(jnp.sum(a * a, axis=-1), eps * eps)
    nb = jnp.maximum(jnp.sum(b * b, axis=-1), eps * eps)
    return jnp.sum(a * b, axis=-1) * jax.lax.rsqrt(na * nb)


def sample_time_and_noise(transport: Transport, key: jax.Array, x1: jax.Array):
    """t per example (`sample_time`) and x0 ~ N(0, I) like x1, as SiT's `Transport.sample`."""
    key_t, key_x0 = jax.random.split(key)
    t = sample_time(transport, key_t, x1.shape[0])
    x0 = jax.random.normal(key_x0, x1.shape, x1.dtype)
    return t.astype(x1.dtype), x0


def training_losses(transport: Transport, model_fn: ModelFn, x1: jax.Array, key: jax.Array | None = None, *,
                    t: jax.Array | None = None, x0: jax.Array | None = None) -> dict:
    """SiT's `Transport.training_losses`: {"loss": (B,), "pred": network output, "t": (B,)}.

    model_fn(x_t, t) gets the interpolant and float times (B,) in [t0, t1] and returns an array
    shaped like x1 (drop a learned-sigma half first: `split_learned_sigma`). t and x0 are drawn from
    `key` unless both are given (to reproduce a draw). Regression targets:
      velocity: |out - u_t|^2 (no weighting, whatever loss_weight says, as SiT);
      noise:    w |out - x0|^2;   score: w |sigma_t out + x0|^2;
    with w = 1, (drift_var / sigma_t)^2 ("velocity") or drift_var / sigma_t^2 ("likelihood").
    With use_cosine_loss (LightningDiT) "loss" is the sum mse + cos_loss, both also returned: cos_loss
    is the mean over pixels of 1 - cos(out, u_t) along channels (LightningDiT's train.py adds the two
    batch means, which is the batch mean of the sum).
    """
    # The interpolation and the loss run in (at least) float32 whatever the data's dtype: a bfloat16 t
    # would put the interpolant off the path by up to 0.4%.
    x1 = x1.astype(jnp.promote_types(x1.dtype, jnp.float32))
    if t is None or x0 is None:
        if key is None:
            raise ValueError("training_losses needs a key, or both t and x0")
        t_drawn, x0_drawn = sample_time_and_noise(transport, key, x1)
        t = t_drawn if t is None else t
        x0 = x0_drawn if x0 is None else x0
    t, x0 = jnp.asarray(t, x1.dtype), jnp.asarray(x0, x1.dtype)
    path = transport.path_sampler
    t, xt, ut = path.plan(t, x0, x1)
    out = model_fn(xt, t)
    if out.shape != xt.shape:
        raise ValueError(f"model output shape {out.shape} differs from the input's {xt.shape}"
                         " (a learned-sigma output must be split first)")
    if transport.prediction == "velocity":
        loss = mean_flat((out - ut) ** 2)
    else:
        _, drift_var = path.compute_drift(xt, t)
        sigma_t, _ = path.compute_sigma_t(expand_t_like_x(t, xt))
        if transport.loss_weight == "velocity":
            weight = (drift_var / sigma_t) ** 2
        elif transport.loss_weight == "likelihood":
            weight = drift_var / (sigma_t ** 2)
        else:
            weight = 1
        if transport.prediction == "noise":
            loss = mean_flat(weight * ((out - x0) ** 2))
        else:
            loss = mean_flat(weight * ((out * sigma_t + x0) ** 2))
    terms = {"loss": loss, "pred": out, "t": t}
    if transport.use_cosine_loss:
        cos_loss = mean_flat(1 - cosine_similarity(out, ut))
        terms.update(loss=loss + cos_loss, mse=loss, cos_loss=cos_loss)
    return terms


def velocity_from_output(transport: Transport, out: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """The probability-flow velocity from a network output (SiT's `get_drift`)."""
    if transport.prediction == "velocity":
        return out
    path = transport.path_sampler
    drift_mean, drift_var = path.compute_drift(x, t)
    score = out if transport.prediction == "score" else path.get_score_from_noise(out, x, t)
    return -drift_mean + drift_var * score


def score_from_output(transport: Transport, out: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """The score grad log p_t(x) from a network output (SiT's `get_score`)."""
    path = transport.path_sampler
    if transport.prediction == "velocity":
        return path.get_score_from_velocity(out, x, t)
    if transport.prediction == "score":
        return out
    return path.get_score_from_noise(out, x, t)


def velocity_fn(transport: Transport, model_fn: ModelFn) -> ModelFn:
    """model_fn -> the ODE's field v(x, t) (one network evaluation per call)."""
    return lambda x, t: velocity_from_output(transport, model_fn(x, t), x, t)


def score_fn(transport: Transport, model_fn: ModelFn) -> ModelFn:
    return lambda x, t: score_from_output(transport, model_fn(x, t), x, t)
