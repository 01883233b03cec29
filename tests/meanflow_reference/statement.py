"""A statement of the official MeanFlow training step (Gsunshine/meanflow: meanflow.py, models/models_dit.py,
train.py) written from its behaviour, in float64 JAX over plain functions, independent of dit_jax.

- The network is a plain function of a parameter tree in the *official Flax layout* (`official_tree`
  builds one with random values): `net/x_embedder/proj/{kernel,bias}` (an HWIO conv), each linear layer as
  `.../_flax_linear/{kernel,bias}`, blocks under `blocks/layers_<i>`, the adaLN linears under
  `adaLN_modulation/layers_1`, timestep MLPs under `mlp/layers_{0,2}`, the label table (classes + 1 rows)
  under `y_embedder/embedding_table/_flax_embedding/embedding`. u(z, t, h, y): t and h unscaled, each
  through its own sinusoid (cos first) and MLP, summed with the label embedding, in that order.
- du/dt is not a jvp: it is a central finite difference of the network along (z, t, r) -> (z, t, r) +
  s (v_g, 1, 0) (float64, s = 1e-4), so the statement checks the tangents rather than repeating a jax.jvp.
  `tangent` swaps the (dt, dr) tangent (a negative control), `stop_gradient=False` lets the gradient
  through the target (another).
- The target is the official formula: u_tgt = v_g - clip(t - r, 0, 1) du/dt; the loss is the squared error
  summed over pixels over (error + norm_eps) ** norm_p held fixed, averaged over the batch.
- Draws are given: 't' and 'r' (two time draws), 'noise', 'drop' (bool). t = max, r = min; the first
  int(B * data_proportion) rows take r = t; the first count(drop) rows are dropped to the null class and
  their v_g reset to v; guidance velocities use h = 0 and the undropped labels, omega -> 1 and kappa -> 0
  outside [t_start, t_end].
- The update: optax.adamw(lr, b1 0.9, b2, eps 1e-8, weight_decay 0) written out, then the EMA
  alpha * ema + (1 - alpha) * params from a copy.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

FD_STEP = 1e-4


def lin(node, x):
    node = node["_flax_linear"]
    return x @ node["kernel"] + node["bias"]


def sinusoid(t, dim=256):
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / half)
    args = t[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def embed_time(node, t):
    m = node["mlp"]
    return lin(m["layers_2"], jax.nn.silu(lin(m["layers_0"], sinusoid(t))))


def pos_table(dim, grid):
    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([one(dim // 2, w), one(dim // 2, h)], axis=1).astype(np.float32).astype(np.float64)


def norm(x, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def block(node, x, c, heads):
    mods = jnp.split(lin(node["adaLN_modulation"]["layers_1"], jax.nn.silu(c)), 6, axis=1)
    sh1, sc1, g1, sh2, sc2, g2 = (m[:, None, :] for m in mods)
    b, n, d = x.shape
    a = norm(x) * (1 + sc1) + sh1
    qkv = lin(node["attn"]["qkv"], a).reshape(b, n, 3, heads, d // heads)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    w = jax.nn.softmax((q / math.sqrt(d // heads)) @ k.transpose(0, 1, 3, 2), axis=-1)
    a = (w @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = x + g1 * lin(node["attn"]["proj"], a)
    m = norm(x) * (1 + sc2) + sh2
    m = lin(node["mlp"]["fc2"], jax.nn.gelu(lin(node["mlp"]["fc1"], m), approximate=True))
    return x + g2 * m


def network(tree, x, t, h, y, heads):
    """The official DiT(x, t, h, y), NHWC in and out, no learned sigma."""
    net = tree["net"]
    proj = net["x_embedder"]["proj"]
    p = proj["kernel"].shape[0]
    b, hh, ww, ch = x.shape
    tok = jax.lax.conv_general_dilated(x, proj["kernel"], (p, p), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + proj["bias"]
    gh = hh // p
    d = tok.shape[-1]
    tok = tok.reshape(b, gh * gh, d) + pos_table(d, gh)
    table = net["y_embedder"]["embedding_table"]["_flax_embedding"]["embedding"]
    c = embed_time(net["t_embedder"], t) + embed_time(net["h_embedder"], h) + table[y]
    for i in range(len(net["blocks"])):
        tok = block(net["blocks"][f"layers_{i}"], tok, c, heads)
    fl = net["final_layer"]
    shift, scale = jnp.split(lin(fl["adaLN_modulation"]["layers_1"], jax.nn.silu(c)), 2, axis=1)
    out = lin(fl["linear"], norm(tok) * (1 + scale[:, None]) + shift[:, None])
    out = out.reshape(b, gh, gh, p, p, ch).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, hh, ww, ch)


def official_tree(seed, *, depth, hidden, heads, patch, channels, classes, scale=0.3, time_scale=1.0):
    """Random parameters in the official layout (every layer random, the zero-initialised ones too);
    time_scale multiplies the t and h embedders' weights (a network that depends more on its times)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        fan_in = shape[-2] if len(shape) > 1 else 4
        return (rng.standard_normal(shape) * scale / math.sqrt(fan_in)).astype(np.float32)

    def linear(i, o):
        return {"_flax_linear": {"kernel": w(i, o), "bias": w(o) * 0.3}}

    def temb():
        mlp = {"layers_0": linear(256, hidden), "layers_2": linear(hidden, hidden)}
        return {"mlp": jax.tree.map(lambda a: a * time_scale, mlp)}
    d = hidden
    blocks = {f"layers_{i}": {"adaLN_modulation": {"layers_1": linear(d, 6 * d)},
                              "attn": {"qkv": linear(d, 3 * d), "proj": linear(d, d)},
                              "mlp": {"fc1": linear(d, 4 * d), "fc2": linear(4 * d, d)}} for i in range(depth)}
    net = {"x_embedder": {"proj": {"kernel": w(patch, patch, channels, d), "bias": w(d)}},
           "t_embedder": temb(), "h_embedder": temb(),
           "y_embedder": {"embedding_table": {"_flax_embedding": {"embedding": w(classes + 1, d) * 3}}},
           "blocks": blocks,
           "final_layer": {"adaLN_modulation": {"layers_1": linear(d, 2 * d)},
                           "linear": linear(d, patch * patch * channels)}}
    return {"net": net}


def loss_terms(tree, x, y, draws, mf, heads, *, tangent=(1.0, 0.0), stop_gradient=True):
    """Per-example (loss, error, v_loss) of the official forward; mf: a dict of MeanFlow's fields."""
    b = x.shape[0]
    null = tree["net"]["y_embedder"]["embedding_table"]["_flax_embedding"]["embedding"].shape[0] - 1
    t0 = jnp.maximum(draws["t"], draws["r"])
    r0 = jnp.minimum(draws["t"], draws["r"])
    r0 = jnp.where(jnp.arange(b) < int(b * mf["data_proportion"]), t0, r0)
    t, r = t0[:, None, None, None], r0[:, None, None, None]
    e = draws["noise"]
    z = (1 - t) * x + t * e
    v = e - x

    def u(zz, tt, rr, yy):
        return network(tree, zz, tt, tt - rr, yy, heads)
    v_g = v
    if mf["guidance"] == "cfg":
        inside = (t0 >= mf["t_start"]) & (t0 <= mf["t_end"])
        om = jnp.where(inside, mf["omega"], 1.0)[:, None, None, None]
        ka = jnp.where(inside, mf["kappa"], 0.0)[:, None, None, None]
        v_null = u(z, t0, t0, jnp.full_like(y, null))
        v_cond = u(z, t0, t0, y)
        v_g = om * v + (1 - om - ka) * v_null + ka * v_cond   # = v_null + om (v - v_null) when kappa = 0
    first = jnp.arange(b) < jnp.sum(draws["drop"])
    y_in = jnp.where(first, null, y)
    v_g = jnp.where(first[:, None, None, None], v, v_g)
    dt, dr = tangent
    s = FD_STEP
    up = u(z + s * v_g, t0 + s * dt, r0 + s * dr, y_in)
    down = u(z - s * v_g, t0 - s * dt, r0 - s * dr, y_in)
    du = (up - down) / (2 * s)
    pred = u(z, t0, r0, y_in)
    target = v_g - jnp.clip(t - r, 0.0, 1.0) * du
    if stop_gradient:
        target = jax.lax.stop_gradient(target)
    error = ((pred - target) ** 2).sum(axis=(1, 2, 3))
    loss = error / jax.lax.stop_gradient((error + mf["norm_eps"]) ** mf["norm_p"])
    return loss, error, ((pred - v) ** 2).sum(axis=(1, 2, 3))


def to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


@functools.lru_cache(maxsize=None)
def _compiled(mf_items, heads, tangent, stop_gradient):
    mf = dict(mf_items)

    def mean_loss(p, x, y, draws):
        terms = loss_terms(p, x, y, draws, mf, heads, tangent=tangent, stop_gradient=stop_gradient)
        return terms[0].mean(), terms
    return jax.jit(jax.value_and_grad(mean_loss, has_aux=True))


def loss_and_grad(tree, x, y, draws, mf, heads, *, tangent=(1.0, 0.0), stop_gradient=True):
    """(per-example loss, error, v_loss, grad of the mean loss) in float64."""
    fn = _compiled(tuple(sorted(mf.items())), heads, tuple(tangent), stop_gradient)
    with jax.enable_x64(True):
        d64 = {k: jnp.asarray(np.asarray(v, np.float64 if k != "drop" else bool)) for k, v in draws.items()}
        x64, y64 = jnp.asarray(np.asarray(x, np.float64)), jnp.asarray(np.asarray(y), jnp.int32)
        (_, terms), grad = fn(to64(tree), x64, y64, d64)
        return tuple(np.asarray(a) for a in terms) + (jax.tree.map(np.asarray, grad),)


def train(tree, batches, mf, heads, *, lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, ema_decay=0.9999):
    """Official train_step_with_vae's update over `batches` [(x, y, draws)]: (params, ema) in float64."""
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
    ema = jax.tree.map(np.copy, params)
    m = jax.tree.map(np.zeros_like, params)
    v = jax.tree.map(np.zeros_like, params)
    for step, (x, y, draws) in enumerate(batches, start=1):
        grad = loss_and_grad(params, x, y, draws, mf, heads)[-1]
        m = jax.tree.map(lambda a, g: b1 * a + (1 - b1) * g, m, grad)
        v = jax.tree.map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grad)
        params = jax.tree.map(lambda p, a, c: p - lr * (a / (1 - b1 ** step)) / (np.sqrt(c / (1 - b2 ** step)) + eps),
                              params, m, v)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
    return params, ema
