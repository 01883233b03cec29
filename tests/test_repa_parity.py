"""REPA's objective and training update against the PyTorch statement of sihyun-yu/REPA in
tests/repa_reference (on the DiT of tests/torch_reference), float32, tiny random SiT with its
zero-initialised layers randomised, two encoders.

Checked: the denoising and projection losses on injected draws and features (linear and cosine paths),
the lognormal time transform, and five iterations of REPA's train.py (posterior sample, SILoss, backward,
clip_grad_norm_ 1.0, AdamW, EMA) beside our jitted step, in parameters and EMA. Negative controls: SiT's
time convention (t = 1 data), the projector after the wrong block, and no gradient clipping.
"""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.models.dit import DiT, dit_config
from dit_jax.parity import compare, nchw, nhwc, randomize_zero_layers

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from repa_helpers import B, CFG, DEPTH, LOSS_TOL, PARAM_TOL, PROJ_DIM, Z_DIMS, _ours, _torch_net  # noqa: E402
from repa_helpers import ref as _load_reference  # noqa: E402


@pytest.fixture(scope="module")
def ref():
    return _load_reference()


class Draws:
    """torch.rand / randn / randn_like return the queued arrays in order (shapes checked), so the
    statement's draws are ours, and the order REPA draws them in is asserted."""

    def __init__(self, *queue):
        self.queue = list(queue)

    def __enter__(self):
        self.saved = torch.rand, torch.randn, torch.randn_like

        def pop(kind, shape):
            got_kind, value = self.queue.pop(0)
            assert got_kind == kind, f"REPA draws {kind} here, the test queued {got_kind}"
            t = torch.from_numpy(np.asarray(value, np.float32))
            return t.reshape(shape)
        torch.rand = lambda *shape, **k: pop("rand", shape[0] if len(shape) == 1 and isinstance(shape[0], tuple)
                                             else shape)
        torch.randn = lambda *shape, **k: pop("randn", shape[0] if isinstance(shape[0], tuple) else shape)
        torch.randn_like = lambda x, **k: pop("randn", x.shape)
        return self

    def __exit__(self, *exc):
        torch.rand, torch.randn, torch.randn_like = self.saved
        assert not self.queue, f"{len(self.queue)} queued draws unused"


def _batch(seed):
    rng = np.random.default_rng(seed)
    shape = (B, CFG.input_size, CFG.input_size, CFG.in_channels)
    tokens = CFG.num_tokens
    return dict(
        mean=rng.standard_normal(shape).astype(np.float32) * 3, std=rng.uniform(0.05, 0.5, shape).astype(np.float32),
        eps=rng.standard_normal(shape).astype(np.float32), t=rng.random(B).astype(np.float32),
        noise=rng.standard_normal(shape).astype(np.float32), y=rng.integers(0, CFG.num_classes, B),
        drop=rng.random(B) < 0.3, zs=[rng.standard_normal((B, tokens, z)).astype(np.float32) for z in Z_DIMS])


def _our_losses(params, x, b, path, capture=DEPTH, sit_convention=False):
    from dit_jax.models.repa import PROJECTORS, Projectors
    from dit_jax.transport import repa as obj
    t = jnp.asarray(b["t"])
    x_t, target = obj.noisy_input_and_target(path, jnp.asarray(x), jnp.asarray(b["noise"]), t)
    if sit_convention:   # the negative control: t = 1 data (x_t = t x + (1 - t) e, v = x - e), same draws
        x_t, target = obj.noisy_input_and_target(path, jnp.asarray(b["noise"]), jnp.asarray(x), t)
    dit = {k: v for k, v in params.items() if k != PROJECTORS}
    out, tokens = DiT(CFG).apply({"params": dit}, x_t, t, jnp.asarray(b["y"], jnp.int32),
                                 force_drop=jnp.asarray(b["drop"]), capture_depth=capture)
    zt = Projectors(PROJ_DIM, Z_DIMS).apply({"params": params[PROJECTORS]}, tokens)
    return obj.denoising_loss(out, target), obj.projection_loss([jnp.asarray(z) for z in b["zs"]], zt)


def _ref_losses(ref, model, x, b, path):
    model.eval()
    mask = torch.from_numpy(b["drop"])
    emb = model.net.y_embedder
    emb_forward = emb.forward
    emb.forward = lambda labels, train, force_drop_ids=None: emb.embedding_table(torch.where(mask, emb.num_classes, labels))
    try:
        with torch.no_grad(), Draws(("rand", b["t"]), ("randn", nchw(b["noise"]).numpy())):
            d, p = ref["loss"].SILoss(path)(model, nchw(x), torch.from_numpy(b["y"]),
                                            [torch.from_numpy(z) for z in b["zs"]])
    finally:
        emb.forward = emb_forward
    return d.numpy(), float(p)


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_losses_match_repa(ref, path):
    model = _torch_net(ref)
    params = _ours(model)
    b = _batch(1)
    x = b["mean"] * 0.18215
    d_ref, p_ref = _ref_losses(ref, model, x, b, path)
    d, p = _our_losses(params, x, b, path)
    rows = [compare("denoising loss", d, d_ref, LOSS_TOL), compare("projection loss", p, p_ref, LOSS_TOL)]
    print("\n".join(f"{path} {r.name}: max abs {r.max_abs:.2e} rel {r.rel:.2e}" for r in rows))
    assert all(r.rel <= LOSS_TOL for r in rows), rows
    # Negative controls: SiT's convention (t = 1 data) for the same draws, and the projector after block 3.
    d_sit, _ = _our_losses(params, x, b, path, sit_convention=True)
    assert compare("t = 1 data", d_sit, d_ref, LOSS_TOL).rel > 100 * LOSS_TOL
    _, p_wrong = _our_losses(params, x, b, path, capture=DEPTH + 1)
    assert compare("projector after block 3", p_wrong, p_ref, LOSS_TOL).rel > 100 * LOSS_TOL


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_lognormal_time(ref, path):
    from dit_jax.transport.repa import lognormal_time
    n = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    with Draws(("randn", n)):
        want = ref["loss"].sample_time(64, "lognormal", path).flatten().numpy()
    got = np.asarray(lognormal_time(jnp.asarray(n), path))
    assert compare("lognormal t", got, want, 1e-6).rel <= 1e-6
    assert compare("uniform instead", np.asarray(n), want, 1e-6).rel > 1e-3


def _program(capture=DEPTH, clip=1.0):
    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.train.programs import build_train_step, vae_argument
    from dit_jax.run import config_for_model, make_run
    from dit_jax.train.repa import attach
    config = config_for_model(CFG)
    config.data.update(latents="", image_size=8)
    config.optim.update(lr=1e-4, weight_decay=0.0, grad_clip=clip, b1=0.9, b2=0.999, eps=1e-8)
    config.ema_decay = 0.9999
    config.repa.update(encoder="digits-mlp,digits-mlp", encoder_depth=capture, projector_dim=PROJ_DIM)
    run = attach(make_run(config, vae=None, mesh=make_mesh(devices=jax.devices()[:1])), "random")
    return build_train_step(run), vae_argument(run)


def _five_steps(ref, capture=DEPTH, clip=1.0, steps=5):
    from dit_jax.convert.repa_torch import to_repa_torch
    model = _torch_net(ref)
    ema = _torch_net(ref)
    ema.load_state_dict(model.state_dict())
    model.train()
    opt = torch.optim.AdamW([p for _, p in model.named_parameters()], lr=1e-4, weight_decay=0.0)
    program, frozen = _program(capture, clip)
    state = program.init(_ours(model))
    start = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    norms, losses = [], []
    for k in range(steps):
        b = _batch(10 + k)
        if k == 0:
            b["drop"][-1] = True
        with Draws(("randn", nchw(b["eps"]).numpy()), ("rand", b["t"]), ("randn", nchw(b["noise"]).numpy()),
                   ("rand", np.where(b["drop"], 0.0, 0.99))):   # REPA's order: posterior, time, noise, label drop
            loss, _, _, norm = ref["train"].train_iteration(
                model, ema, opt, ref["loss"].SILoss("linear"), nchw(b["mean"]), nchw(b["std"]),
                torch.from_numpy(b["y"]), [torch.from_numpy(z) for z in b["zs"]])
        norms.append(float(norm))
        x = (b["mean"] + b["std"] * b["eps"]) * np.float32(0.18215)   # the same posterior sample, given as x0
        draws = {"t": jnp.asarray(b["t"]), "noise": jnp.asarray(b["noise"]), "drop": jnp.asarray(b["drop"]),
                 "zs": [jnp.asarray(z) for z in b["zs"]]}
        state, metrics = program.step(state, {"image": jnp.asarray(x), "label": jnp.asarray(b["y"], jnp.int32),
                                              "draws": draws}, frozen)
        losses.append((float(metrics["loss"]), float(loss)))
    ours = to_repa_torch(jax.tree.map(np.asarray, state.params), CFG)
    ours_ema = to_repa_torch(jax.tree.map(np.asarray, state.ema_params), CFG)
    theirs, theirs_ema = model.state_dict(), ema.state_dict()
    keys = sorted(k for k in theirs if k != "pos_embed")
    # The attention's key bias has an exactly-zero gradient (softmax ignores a shift shared by all keys):
    # both sides' Adam then normalises rounding noise to +-lr, so it is left out of the parameter rows.
    h = CFG.hidden_size
    moving = lambda sd: np.concatenate([np.delete(np.asarray(sd[k]), np.s_[h:2 * h]) if k.endswith("qkv.bias")  # noqa: E731
                                        else np.asarray(sd[k]).ravel() for k in keys])
    tn = lambda sd: {k: v.detach().numpy() for k, v in sd.items()}  # noqa: E731
    if os.environ.get("REPA_PARITY_DEBUG"):
        for k in keys:
            a, b2, s0 = np.asarray(ours[k]), theirs[k].detach().numpy(), start[k]
            print(k, f"{np.abs(a - b2).max():.2e}", f"{np.abs(b2 - s0).max():.2e}")
    rows = [compare(f"params after {steps} steps", moving(ours), moving(tn(theirs)), PARAM_TOL),
            compare(f"EMA after {steps} steps", moving(ours_ema), moving(tn(theirs_ema)), PARAM_TOL),
            compare(f"update over {steps} steps", moving(ours) - moving(start),
                    moving(tn(theirs)) - moving(start), 1e-3)]
    return rows, norms, losses


def test_five_training_steps_match_repa(ref):
    rows, norms, losses = _five_steps(ref)
    for r in rows:
        print(f"{r.name}: max abs {r.max_abs:.2e} rel {r.rel:.2e}")
    print("grad norms (reference, before clipping):", [f"{n:.3f}" for n in norms])
    assert max(norms) > 1.0, "the test should exercise REPA's gradient clipping"
    for ours, theirs in losses:
        assert abs(ours - theirs) <= 1e-5 * abs(theirs), losses
    assert rows[0].rel <= PARAM_TOL and rows[1].rel <= PARAM_TOL, rows
    assert rows[2].rel <= 1e-3, rows   # the change itself, not only the (large) parameters


def test_five_training_steps_negative_controls(ref):
    """Each wrong variant fails both bars of the parity test: parameters and the update itself."""
    wrong_block, _, _ = _five_steps(ref, capture=DEPTH + 1, steps=2)
    print("projector after block 3:", [f"{r.name}: rel {r.rel:.2e}" for r in wrong_block])
    assert wrong_block[0].rel > PARAM_TOL and wrong_block[2].rel > 10 * 1e-3, wrong_block
    no_clip, norms, _ = _five_steps(ref, clip=0.0, steps=2)
    print("no gradient clipping:", [f"{r.name}: rel {r.rel:.2e}" for r in no_clip])
    assert max(norms) > 1.0 and no_clip[0].rel > PARAM_TOL and no_clip[2].rel > 10 * 1e-3, no_clip
