"""MeanFlow's loss, gradients and five training steps against a float64 statement of the official code
(tests/meanflow_reference/statement.py: the official network over its own Flax layout, du/dt by central
finite differences, the target held fixed by construction of the statement's stop-gradient).

The statement's random parameters are written in the official layout and converted with
dit_jax.convert.meanflow_flax, so these tests check the checkpoint conversion too. At norm_p = 1 the
weighted loss is about 1 whatever the network does: the per-example squared errors and the gradients are
what is compared. Negative controls: the tangents (v_g, 0, 0) and (v_g, 1, 1) in place of (v_g, 1, 0), and
the target not held fixed, each fail the tolerance.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.convert.meanflow_flax import convert
from dit_jax.meanflow.objective import MeanFlow
from dit_jax.models.dit import DiT

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "meanflow_reference"))
import statement  # noqa: E402

pytestmark = pytest.mark.slow

SHAPE = dict(depth=2, hidden=32, heads=2, patch=2, channels=4, classes=10)
B, SIZE = 8, 8
TOL = 1e-5   # relative to the largest magnitude of each compared array; measured (see TOL_NOTE)
TOL_NOTE = "measured: errors 2-3e-7, gradients 7-9e-7, five steps 1.3e-6 relative (float32 vs float64)"

SETTINGS = {
    "paper": MeanFlow(),                                   # logit-normal, cfg omega 1 kappa 0.5, norm_p 1
    "omega_only": MeanFlow(omega=2.0, kappa=0.0, t_start=0.2, t_end=0.7, norm_p=0.5, data_proportion=0.25,
                           time_dist="uniform"),
    "no_guidance": MeanFlow(guidance="none", norm_p=0.0, data_proportion=0.5),
}


def _mf_dict(mf: MeanFlow) -> dict:
    return dataclasses.asdict(mf)


@pytest.fixture(scope="module")
def model():
    tree = statement.official_tree(0, **SHAPE, time_scale=4.0)
    params, config = convert(tree, input_size=SIZE, num_heads=SHAPE["heads"])
    return tree, params, config


def _batch(seed: int, mf: MeanFlow):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, SIZE, SIZE, SHAPE["channels"])).astype(np.float32)
    y = rng.integers(0, SHAPE["classes"], B).astype(np.int32)
    if mf.time_dist == "uniform":
        t, r = rng.uniform(size=(2, B)).astype(np.float32)
    else:
        t, r = (1 / (1 + np.exp(-(rng.standard_normal((2, B)) * mf.p_std + mf.p_mean)))).astype(np.float32)
    drop = np.zeros(B, bool)
    drop[rng.choice(B, 2, replace=False)] = True   # two dropped rows: the first two get the null class
    noise = rng.standard_normal(x.shape).astype(np.float32)
    return x, y, dict(t=t, r=r, noise=noise, drop=drop)


def _ours(params, config, mf, x, y, draws):
    from dit_jax.train.step import _meanflow_loss_fn
    loss_fn = _meanflow_loss_fn(mf, DiT(config), jnp.asarray(x), jnp.asarray(y),
                                {k: jnp.asarray(v) for k, v in draws.items()})
    (_, terms), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    return jax.tree.map(np.asarray, terms), jax.tree.map(np.asarray, grad)


def rel(a, b) -> float:
    """max |a - b| over max |b| (arrays or matching trees)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return max(float(np.max(np.abs(np.asarray(p, np.float64) - q)) / max(np.max(np.abs(q)), 1e-30))
               for p, q in zip(la, lb))


@pytest.fixture(scope="module")
def paper_case(model):
    tree, params, config = model
    mf = SETTINGS["paper"]
    x, y, draws = _batch(1, mf)
    return x, y, draws, _ours(params, config, mf, x, y, draws)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_loss_terms_and_gradients_match_the_statement(model, paper_case, name):
    tree, params, config = model
    mf = SETTINGS[name]
    if name == "paper":
        x, y, draws, (terms, grad) = paper_case
    else:
        x, y, draws = _batch(2, mf)
        terms, grad = _ours(params, config, mf, x, y, draws)
    loss, error, v_loss, ref_grad = statement.loss_and_grad(tree, x, y, draws, _mf_dict(mf), SHAPE["heads"])
    ref_grad, _ = convert(ref_grad, input_size=SIZE, num_heads=SHAPE["heads"])
    errs = dict(error=rel(terms["error"], error), loss=rel(terms["loss"], loss), v_loss=rel(terms["v_loss"], v_loss),
                grad=rel(grad, ref_grad))
    print(name, {k: f"{v:.1e}" for k, v in errs.items()})
    assert max(errs.values()) < TOL, errs
    assert np.all(error > 1e-3)   # the squared errors are not trivially zero


@pytest.mark.parametrize("variant", [dict(tangent=(0.0, 0.0)), dict(tangent=(1.0, 1.0)),
                                     dict(stop_gradient=False)], ids=["tangent_v00", "tangent_v11", "no_stop_grad"])
def test_negative_controls_fail(model, paper_case, variant):
    tree, _, _ = model
    x, y, draws, (terms, grad) = paper_case
    loss, error, v_loss, ref_grad = statement.loss_and_grad(tree, x, y, draws, _mf_dict(SETTINGS["paper"]),
                                                            SHAPE["heads"], **variant)
    ref_grad, _ = convert(ref_grad, input_size=SIZE, num_heads=SHAPE["heads"])
    worst = max(rel(terms["error"], error), rel(grad, ref_grad))
    print(variant, f"{worst:.1e}")
    assert worst > 100 * TOL   # measured: (v_g,0,0) 3.0e-3, (v_g,1,1) 1.7e-3, no stop-gradient 4.1e-1


def _without_key_bias(params):
    """The params with the attention's key bias zeroed. Its gradient is zero in exact arithmetic (softmax
    over keys ignores a per-query constant, and q . b_k is one), so float32's round-off in it (~1e-10) is
    all Adam sees, and its sign-normalised update moves each entry by about lr in any float32
    implementation, the official one included: the float64 statement's stays put."""
    out = jax.tree.map(lambda a: np.array(a, np.float64), params)
    for name in out:
        if name.startswith("blocks_"):
            out[name]["attn"]["qkv"]["bias"][1] = 0.0
    return out


def test_key_bias_gradient_is_zero_in_the_statement(model, paper_case):
    tree, _, _ = model
    x, y, draws, _ = paper_case
    grad = statement.loss_and_grad(tree, x, y, draws, _mf_dict(SETTINGS["paper"]), SHAPE["heads"])[-1]
    grad, _ = convert(grad, input_size=SIZE, num_heads=SHAPE["heads"])
    qkv = grad["blocks_0"]["attn"]["qkv"]["bias"]
    assert np.max(np.abs(qkv[1])) < 1e-12 * np.max(np.abs(qkv))


def test_five_training_steps_match_the_statement(model):
    """Five of our jitted train steps (draws injected) beside the statement's AdamW (b2 0.95) + EMA."""
    import ml_collections
    from dit_jax.train.state import TrainState, make_optimizer
    from dit_jax.train.step import train_step
    tree, params, config = model
    mf = SETTINGS["omega_only"]
    optim = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                                           warmup_steps=0, grad_clip=0.0))
    tx = make_optimizer(optim)
    p32 = jax.tree.map(jnp.asarray, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=p32, opt_state=tx.init(p32),
                       ema_params=jax.tree.map(jnp.copy, p32), rng=jax.random.PRNGKey(0))
    step = jax.jit(lambda s, b: train_step(s, b, model=DiT(config), objective=mf, tx=tx, ema_decay=0.5))
    batches = [_batch(10 + i, mf) for i in range(5)]
    for x, y, draws in batches:
        state, _ = step(state, {"image": jnp.asarray(x), "label": jnp.asarray(y),
                                "draws": {k: jnp.asarray(v) for k, v in draws.items()}})
    ref_params, ref_ema = statement.train(tree, batches, _mf_dict(mf), SHAPE["heads"], lr=1e-4, ema_decay=0.5)
    ref_params, _ = convert(ref_params, input_size=SIZE, num_heads=SHAPE["heads"])
    ref_ema, _ = convert(ref_ema, input_size=SIZE, num_heads=SHAPE["heads"])
    moved = rel(jax.tree.map(np.asarray, state.params), jax.tree.map(np.float64, params))
    mine, ema = _without_key_bias(state.params), _without_key_bias(state.ema_params)
    errs = dict(params=rel(mine, _without_key_bias(ref_params)), ema=rel(ema, _without_key_bias(ref_ema)))
    print("five steps", {k: f"{v:.1e}" for k, v in errs.items()}, f"moved {moved:.1e}")
    assert moved > 1e-3   # the steps changed the parameters by far more than the tolerance
    assert max(errs.values()) < TOL, errs
