"""dit-jax's MeanFlow beside the official code (a Gsunshine/meanflow checkout), on the same random draws.

    python tools/compare_meanflow.py --reference-meanflow /path/to/meanflow

The checkout's `meanflow.py` and `models/models_dit.py` run as they are, on a tiny DiT registered beside
the official sizes (depth 2, hidden 32, 8x8x4 latents, 10 classes) with random parameters in the official
Flax layout. Two shims let code written for an older jax run on this one (REFERENCE.md): `jnp.clip`'s
`a_min`/`a_max` keywords, and a `jax.random` stand-in that hands `MeanFlow.forward` this tool's draws in
the order it asks for them (t, r as normals to its logit-normal, or uniforms; the noise; the class-dropout
uniforms). Our side converts those parameters (dit_jax.convert.meanflow_flax) and runs the train step's
loss with the same draws. Rows: the loss, the per-example |u - v|^2 and the gradients of three settings,
and 1- and 2-step sampling. Exit status 0 when every row is within --tol (relative to the largest
magnitude), 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "meanflow_reference"))
TINY = dict(input_size=8, depth=2, hidden_size=32, patch_size=2, num_heads=2, num_classes=10)


class _Draws:
    """jax.random as MeanFlow.forward calls it: each normal/uniform returns the next queued array."""

    def __init__(self):
        self.queue = []

    def normal(self, key, shape, dtype=None):
        return jnp.asarray(self.queue.pop(0), jnp.float32).reshape(shape)

    def uniform(self, key, shape, dtype=None, **kw):
        return jnp.asarray(self.queue.pop(0), jnp.float32).reshape(shape)


def load_official(path: str):
    """The checkout's meanflow module with the shims, and a tiny DiT registered as 'DiT_Tiny'."""
    sys.path.insert(0, os.path.abspath(path))
    import meanflow as official
    from models import models_dit
    models_dit.DiT_Tiny = functools.partial(models_dit.DiT, **TINY)

    class Jnp(types.ModuleType):
        def __getattr__(self, name):
            return getattr(jnp, name)

        @staticmethod
        def clip(a, a_min=None, a_max=None, **kw):
            return jnp.clip(a, a_min, a_max)
    official.jnp = Jnp("jnp")
    draws = _Draws()
    official.jax = types.SimpleNamespace(random=draws, jvp=jax.jvp, lax=jax.lax)
    return official, draws


def _queue(mf, draws):
    """The official forward's draws, in its order, that give our draws exactly."""
    if mf.time_dist == "logit_normal":
        logit = lambda p: np.log(p / (1 - p))  # noqa: E731
        times = [(logit(draws[k].astype(np.float64)) - mf.p_mean) / mf.p_std for k in ("t", "r")]
    else:
        times = [draws["t"], draws["r"]]
    return times + [draws["noise"], np.where(draws["drop"], 0.0, 1.0)]


def official_step(official, queue, tree, mf, x, y, draws):
    model = official.MeanFlow(
        model_str="DiT_Tiny", model_config={}, num_classes=TINY["num_classes"], noise_dist=mf.time_dist,
        P_mean=mf.p_mean, P_std=mf.p_std, data_proportion=mf.data_proportion, guidance_eq=mf.guidance,
        omega=mf.omega, kappa=mf.kappa, class_dropout_prob=mf.class_dropout_prob, t_start=mf.t_start,
        t_end=mf.t_end, norm_p=mf.norm_p, norm_eps=mf.norm_eps)

    def loss(p):
        queue.queue[:] = _queue(mf, draws)
        return model.apply({"params": p}, jnp.asarray(x), jnp.asarray(y), rngs={"gen": jax.random.key(0)},
                           method=model.forward)
    (value, terms), grad = jax.value_and_grad(loss, has_aux=True)(tree)
    return model, float(value), np.asarray(terms["v_loss"]), grad


def ours_step(params, config, mf, x, y, draws):
    from dit_jax.models.dit import DiT
    from dit_jax.train.step import _meanflow_loss_fn
    fn = _meanflow_loss_fn(mf, DiT(config), jnp.asarray(x), jnp.asarray(y), {k: jnp.asarray(v) for k, v in draws.items()})
    (value, terms), grad = jax.value_and_grad(fn, has_aux=True)(params)
    return float(value), np.asarray(terms["v_loss"]), grad


def rel(a, b) -> float:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return max(float(np.max(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)))
                     / max(float(np.max(np.abs(np.asarray(q, np.float64)))), 1e-30)) for p, q in zip(la, lb))


def settings():
    from dit_jax.meanflow.objective import MeanFlow
    return {"official defaults (cfg omega 1, kappa 0.5)": MeanFlow(),
            "omega 2, kappa 0, t in [0.2, 0.7], p 0.5, uniform": MeanFlow(
                omega=2.0, kappa=0.0, t_start=0.2, t_end=0.7, norm_p=0.5, data_proportion=0.25, time_dist="uniform"),
            "no guidance, p 0": MeanFlow(guidance="none", norm_p=0.0, data_proportion=0.5)}


def _batch(seed, b=8):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 8, 8, 4)).astype(np.float32)
    y = rng.integers(0, TINY["num_classes"], b).astype(np.int32)
    t = (1 / (1 + np.exp(-(rng.standard_normal((2, b)) * 1.0 - 0.4)))).astype(np.float32)
    drop = np.zeros(b, bool)
    drop[rng.choice(b, 2, replace=False)] = True
    return x, y, dict(t=t[0], r=t[1], noise=rng.standard_normal(x.shape).astype(np.float32), drop=drop)


def sample_rows(official, model, tree, params, config):
    from dit_jax.meanflow.objective import MeanFlow
    from dit_jax.sampling.run_sampler import SamplerSettings, make_sampler
    rows = []
    y = jnp.arange(6, dtype=jnp.int32) % TINY["num_classes"]
    key = jax.random.PRNGKey(1)
    for steps in (1, 2):
        ours = np.asarray(make_sampler(config, MeanFlow(), SamplerSettings(sampler="meanflow", steps=str(steps)))(
            params, y, key))
        z = jax.random.normal(jax.random.split(key)[0], ours.shape, jnp.float32)
        grid = jnp.linspace(1.0, 0.0, steps + 1)
        for i in range(steps):
            z = model.apply({"params": tree}, z, y, i, grid, rngs={"gen": jax.random.key(i)},
                            method=model.sample_one_step)
        rows.append((f"sampling, {steps} step(s)", rel(ours, z)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-meanflow", required=True, metavar="PATH", help="a Gsunshine/meanflow checkout")
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.reference_meanflow, "meanflow.py")):
        print(f"error: --reference-meanflow {args.reference_meanflow}: no meanflow.py there", file=sys.stderr)
        return 2
    import statement
    from dit_jax.convert.meanflow_flax import convert
    official, queue = load_official(args.reference_meanflow)
    tree = statement.official_tree(0, depth=2, hidden=32, heads=2, patch=2, channels=4, classes=10, time_scale=4.0)
    params, config = convert(tree, input_size=8, num_heads=2)
    rows = []
    for i, (name, mf) in enumerate(settings().items()):
        x, y, draws = _batch(i)
        model, loss, v_loss, grad = official_step(official, queue, tree, mf, x, y, draws)
        our_loss, our_v, our_grad = ours_step(params, config, mf, x, y, draws)
        grad, _ = convert(jax.tree.map(np.asarray, grad), input_size=8, num_heads=2)
        rows += [(f"{name}: loss", abs(our_loss - loss) / abs(loss)), (f"{name}: |u - v|^2", rel(our_v, v_loss)),
                 (f"{name}: gradients", rel(our_grad, grad))]
    rows += sample_rows(official, model, tree, params, config)
    width = max(len(r[0]) for r in rows)
    print(f"{'row':<{width}}  max relative error   (tolerance {args.tol:g})")
    for name, err in rows:
        print(f"{name:<{width}}  {err:.1e}{'' if err <= args.tol else '   FAIL'}")
    return 0 if all(err <= args.tol for _, err in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
