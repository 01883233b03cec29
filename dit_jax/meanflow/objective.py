"""MeanFlow's objective (Geng et al. 2025, the official JAX `meanflow.py`) on the DiT backbone.

The network is the average velocity u(z, t, h = t - r, y) over [r, t] (a DiT with
`second_time_input`); with data x and noise e, z_t = (1 - t) x + t e (t = 1 is noise) and the
instantaneous velocity is v = e - x. The MeanFlow identity gives the regression target

    u_tgt = v_g - clip(t - r, 0, 1) * du/dt,   du/dt = d/ds u(z_s, s, s - r) along dz/ds = v_g,

computed with `jax.jvp` (tangents (v_g, 1, 0) for (z, t, r)) and held fixed (stop-gradient). v_g is v
mixed with the network's own guided velocities (training-time guidance, omega and kappa) and then
reset to v on the class-dropped rows. The per-example squared error, summed over pixels, is divided
by stop_grad((error + norm_eps) ** norm_p) (adaptive weighting) and averaged over the batch.

Randomness comes in one dict of draws (`draw`), so a test can run the same update as another
implementation: two time draws, the noise and the class-dropout mask. What the official code then
does deterministically with them is here: t = max, r = min, the first data_proportion of the rows
get r = t, and the class dropout takes the *first* num_drop rows (num_drop = the mask's count).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

TIME_DISTS = ("logit_normal", "uniform")
GUIDANCE = ("cfg", "none")

# u_fn(z, t, h, y) -> the network's output (B, H, W, C); t and h are (B,) floats in [0, 1].
UFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class MeanFlow:
    """The official `MeanFlow` module's training fields (config.meanflow), defaults as its default.py."""
    time_dist: str = "logit_normal"   # noise_dist: t, r each sigmoid(N(p_mean, p_std)) or U[0, 1)
    p_mean: float = -0.4
    p_std: float = 1.0
    data_proportion: float = 0.75     # the first int(B * data_proportion) rows get r = t (flow matching)
    guidance: str = "cfg"             # guidance_eq: "cfg" (omega, kappa) or "none" (v_g = v)
    omega: float = 1.0
    kappa: float = 0.5
    t_start: float = 0.0              # guidance only for t in [t_start, t_end]: omega -> 1, kappa -> 0 outside
    t_end: float = 1.0
    class_dropout_prob: float = 0.1   # rows given the null class (and v_g = v)
    norm_p: float = 1.0               # adaptive weight (error + norm_eps) ** norm_p
    norm_eps: float = 0.01

    def __post_init__(self):
        problems = []
        if self.time_dist not in TIME_DISTS:
            problems.append(f"time_dist must be one of {TIME_DISTS}, got {self.time_dist!r}")
        if self.guidance not in GUIDANCE:
            problems.append(f"guidance must be one of {GUIDANCE}, got {self.guidance!r}")
        if not 0.0 <= self.data_proportion <= 1.0:
            problems.append(f"data_proportion must be in [0, 1], got {self.data_proportion}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            problems.append(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")
        if self.kappa < 0:
            problems.append(f"kappa must be >= 0, got {self.kappa}")
        if not self.p_std > 0:
            problems.append(f"p_std must be > 0, got {self.p_std}")
        if not self.norm_eps > 0:
            problems.append(f"norm_eps must be > 0, got {self.norm_eps}")
        if not 0.0 <= self.t_start <= self.t_end <= 1.0:
            problems.append(f"need 0 <= t_start <= t_end <= 1, got {self.t_start}, {self.t_end}")
        if problems:
            raise ValueError("; ".join(problems))


def _time_draw(mf: MeanFlow, key: jax.Array, batch: int) -> jax.Array:
    if mf.time_dist == "logit_normal":
        return jax.nn.sigmoid(jax.random.normal(key, (batch,), jnp.float32) * mf.p_std + mf.p_mean)
    return jax.random.uniform(key, (batch,), jnp.float32)


def draw(mf: MeanFlow, time_key: jax.Array, noise_key: jax.Array, drop_key: jax.Array, shape) -> dict:
    """One step's randomness: {'t', 'r': the two (B,) time draws (not yet ordered), 'noise': e of x's
    shape, 'drop': (B,) bool, uniform < class_dropout_prob (only its count matters)}."""
    b = shape[0]
    k_t, k_r = jax.random.split(time_key)
    return dict(t=_time_draw(mf, k_t, b), r=_time_draw(mf, k_r, b),
                noise=jax.random.normal(noise_key, shape, jnp.float32),
                drop=jax.random.uniform(drop_key, (b,)) < mf.class_dropout_prob)


def times(mf: MeanFlow, t_draw: jax.Array, r_draw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(t, r) shaped (B, 1, 1, 1): t = max, r = min of the draws, r = t on the first data_proportion rows."""
    b = t_draw.shape[0]
    t, r = jnp.maximum(t_draw, r_draw), jnp.minimum(t_draw, r_draw)
    r = jnp.where(jnp.arange(b) < int(b * mf.data_proportion), t, r)
    return t.reshape(b, 1, 1, 1), r.reshape(b, 1, 1, 1)


def guided_velocity(mf: MeanFlow, u_fn: UFn, v: jax.Array, z_t: jax.Array, t: jax.Array, y: jax.Array,
                    null_class: int) -> jax.Array:
    """v_g: the official `guidance_fn`. The network's velocities take h = 0 and the undropped labels."""
    if mf.guidance == "none":
        return v
    b = z_t.shape[0]
    t1, h0 = t.reshape(b), jnp.zeros((b,), t.dtype)
    inside = (t >= mf.t_start) & (t <= mf.t_end)
    omega = jnp.where(inside, mf.omega, 1.0)
    v_uncond = u_fn(z_t, t1, h0, jnp.full((b,), null_class, y.dtype))
    if mf.kappa == 0:
        return v_uncond + omega * (v - v_uncond)
    v_cond = u_fn(z_t, t1, h0, y)
    kappa = jnp.where(inside, mf.kappa, 0.0)
    return omega * v + (1 - omega - kappa) * v_uncond + kappa * v_cond


def class_drop(drop: jax.Array, v: jax.Array, v_g: jax.Array, y: jax.Array, null_class: int):
    """The official `cond_drop`: the FIRST num_drop rows (num_drop = drop's count) get the null class
    and v_g = v."""
    b = y.shape[0]
    rows = jnp.arange(b) < jnp.sum(drop).astype(jnp.int32)
    return jnp.where(rows, null_class, y), jnp.where(rows.reshape(b, 1, 1, 1), v, v_g)


def loss_terms(mf: MeanFlow, u_fn: UFn, x: jax.Array, y: jax.Array, draws: dict, null_class: int) -> dict:
    """Per-example terms: 'loss' (adaptively weighted, the batch mean is the official loss), 'error'
    (the unweighted squared error summed over pixels) and 'v_loss' (|u - v|^2, monitoring only)."""
    b = x.shape[0]
    t, r = times(mf, draws["t"], draws["r"])
    e = draws["noise"].astype(x.dtype)
    z_t = (1 - t) * x + t * e
    v = e - x
    v_g = jax.lax.stop_gradient(guided_velocity(mf, u_fn, v, z_t, t, y, null_class))
    y_inp, v_g = class_drop(draws["drop"], v, v_g, y, null_class)

    def u_of(z, t_, r_):
        return u_fn(z, t_.reshape(b), (t_ - r_).reshape(b), y_inp)

    u, du_dt = jax.jvp(u_of, (z_t, t, r), (v_g, jnp.ones_like(t), jnp.zeros_like(r)))
    u_tgt = jax.lax.stop_gradient(v_g - jnp.clip(t - r, 0.0, 1.0) * du_dt)
    error = jnp.sum((u - u_tgt) ** 2, axis=(1, 2, 3))
    loss = error / jax.lax.stop_gradient((error + mf.norm_eps) ** mf.norm_p)
    return dict(loss=loss, error=error, v_loss=jnp.sum((u - v) ** 2, axis=(1, 2, 3)))


def from_config(section) -> MeanFlow:
    """config.meanflow -> MeanFlow (unknown keys fail, naming the known ones)."""
    fields = {f.name for f in dataclasses.fields(MeanFlow)}
    unknown = set(dict(section)) - fields
    if unknown:
        raise ValueError(f"unknown meanflow keys {sorted(unknown)}; known: {sorted(fields)}")
    return MeanFlow(**dict(section))
