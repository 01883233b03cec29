"""Side-by-side comparison with SiT's PyTorch code (official `models.py` + `transport/`, or the statement
of it in tests/sit_reference with the DiT of tests/torch_reference as its network).

The SiT network is the DiT with learn_sigma=True whose forward drops the variance half; its state dict
has the DiT's names, so `dit_jax.convert.dit_torch.from_torch` reads it unchanged. Both sides get the
same weights (random, with the zero-initialised layers randomised, or a given checkpoint), the same
inputs and the same random draws; rows are `dit_jax.parity.common.Row` (max abs and max|ours - ref| / max|ref|).
`run_sit_comparison`: the converted forward, the guided forward, the training loss of every path x
prediction x loss weight, one ODE step and one SDE step per method (the SDE per diffusion form), the
SDE's last steps, and a whole dopri5 solve against torchdiffeq. `run_sit_training_comparison`: N steps
of SiT's train.py update beside our jitted step.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys
import types
from contextlib import contextmanager
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.convert.dit_torch import from_torch
from dit_jax.models.dit import DiTConfig
from dit_jax.parity.common import Row, compare, flow_sides, nchw, nhwc, randomize_zero_layers, torch_model
from dit_jax.parity.training import compare_training, flat_torch, force_label_drop, our_program, reference_optimizer
from dit_jax.transport import integrators as sit_samplers
from dit_jax.transport.guidance import forward_with_cfg
from dit_jax.transport.paths import DIFFUSION_FORMS, PATHS
from dit_jax.transport.transport import LOSS_WEIGHTS, PREDICTIONS, Transport, training_losses, velocity_fn

# The two diffusion forms the official code cannot run (a misspelt key; a Python float it takes a square
# root of with torch): rows for them give the reference its intended formula, as ours has it.
UNRUNNABLE_FORMS = ("constant", "increasing-decreasing")
# Row families of run_sit_comparison.
PARTS = ("forward", "loss", "steps", "dopri5")


@dataclasses.dataclass
class SiTReference:
    transport: types.ModuleType          # SiT's transport package (create_transport, Sampler, integrators)
    models: types.ModuleType             # SiT's models.py (official: SiT(...); statement: SiT(net, ...))
    dit_models: types.ModuleType | None  # the DiT network of the statement (tests/torch_reference); None: official

    @property
    def official(self) -> bool:
        return hasattr(self.models, "SiT_models")


def _load_module(name: str, path: str, package_dir: str | None = None) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[package_dir] if package_dir else None)
    module = importlib.util.module_from_spec(spec)
    # A second load (another test module, another comparison) must not find the first load's submodules:
    # `from .integrators import ode` would take the cached one and never set `integrators` on this package.
    for stale in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
        del sys.modules[stale]
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_sit_reference(path: str, dit_reference: str | None = None) -> SiTReference:
    """SiT's code at `path` (a willisma/SiT checkout, or tests/sit_reference), under private module names
    (a DiT checkout's `models` may be imported beside it). A statement without SiT_models needs the DiT
    network from `dit_reference` (a DiT checkout or tests/torch_reference)."""
    path = os.path.abspath(path)
    package = os.path.join(path, "transport")
    if not os.path.isfile(os.path.join(path, "models.py")) or not os.path.isdir(package):
        raise FileNotFoundError(f"{path} has no models.py and transport/: pass the root of a SiT checkout "
                                "(or tests/sit_reference)")
    try:
        transport = _load_module("sit_reference_transport", os.path.join(package, "__init__.py"), package)
        models = _load_module("sit_reference_models", os.path.join(path, "models.py"))
    except ImportError as e:
        raise ImportError(f"importing SiT's code failed ({e}); the official models.py needs `pip install timm` "
                          "and its transport needs torchdiffeq") from None
    dit_models = None
    if not hasattr(models, "SiT_models"):
        if not dit_reference:
            raise ValueError(f"{path}/models.py is the statement of SiT's model (no SiT_models): give the DiT it "
                             "wraps (--reference tests/torch_reference, or a DiT checkout)")
        dit_models = _load_module("sit_reference_dit_models", os.path.join(os.path.abspath(dit_reference),
                                                                            "models.py"))
    return SiTReference(transport, models, dit_models)


def sit_network(ref: SiTReference, config: DiTConfig):
    """SiT's network with `config`'s architecture: forward(x, t, y) without the variance half, forward_with_cfg."""
    arch = dict(input_size=config.input_size, patch_size=config.patch_size, in_channels=config.in_channels,
                hidden_size=config.hidden_size, depth=config.depth, num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio, class_dropout_prob=config.class_dropout_prob,
                num_classes=config.num_classes, learn_sigma=config.learn_sigma)
    if ref.official:
        return ref.models.SiT(**arch)
    return ref.models.SiT(torch_model(ref.dit_models, config), config.in_channels, config.learn_sigma)


def _backbone(net):
    """The module holding the official parameter names (the statement wraps it as `.net`)."""
    import torch
    inner = getattr(net, "net", None)
    return inner if isinstance(inner, torch.nn.Module) else net


def _prepare(ref: SiTReference, config: DiTConfig, state_dict, seed: int, log):
    """The reference network with the given (or random) weights, and our converted params."""
    import torch
    torch.manual_seed(seed)
    net = sit_network(ref, config)
    if state_dict is not None:
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
    else:
        log(f"random weights; {randomize_zero_layers(_backbone(net), seed)} zero-initialised tensors randomised")
    params, _ = from_torch({k: v.detach().numpy() for k, v in net.state_dict().items()}, config)
    return net, params


@contextmanager
def fixed_draws(*, randn=None, randn_like=None, rand=None):
    """Make torch.randn / randn_like / rand return the given arrays (SiT's code draws through `th.*`)."""
    import torch
    saved = torch.randn, torch.randn_like, torch.rand
    if randn is not None:
        torch.randn = lambda *a, **k: randn.clone()
    if randn_like is not None:
        torch.randn_like = lambda x, *a, **k: randn_like.to(dtype=x.dtype).clone()
    if rand is not None:
        torch.rand = lambda *a, **k: rand.clone()
    try:
        yield
    finally:
        torch.randn, torch.randn_like, torch.rand = saved


def intended_compute_diffusion(plan):
    """The reference plan's compute_diffusion with the two unrunnable forms given their formulas."""
    import torch
    original = plan.compute_diffusion

    def compute_diffusion(x, t, form="constant", norm=1.0):
        te = t.view(t.size(0), *([1] * (x.dim() - 1)))
        if form == "constant":
            return torch.full_like(te, norm)
        if form == "increasing-decreasing":
            return norm * torch.sin(math.pi * te) ** 2
        return original(x, t, form, norm)
    return compute_diffusion


def _sde_drift(sampler, form: str, norm: float):
    """(drift, diffusion) of the reference's SDE: official name-mangled method or the statement's."""
    if hasattr(sampler, "_sde_parts"):
        return sampler._sde_parts(form, norm)
    return sampler._Sampler__get_sde_diffusion_and_drift(diffusion_form=form, diffusion_norm=norm)


def _last_step_fn(sampler, drift, last_step, size):
    if hasattr(sampler, "_last_step"):
        return sampler._last_step(drift, last_step, size)
    return sampler._Sampler__get_last_step(drift, last_step=last_step, last_step_size=size)


def run_sit_comparison(ref: SiTReference, config: DiTConfig, *, state_dict: dict | None = None, batch: int = 4,
                       cfg_scale: float = 1.5, seed: int = 0, tol: float = 1e-5, dopri5_tol: float = 2e-3,
                       parts: tuple = PARTS, log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Compare the converted forward and guided forward ("forward"), the training loss of every path x
    prediction x weighting ("loss"), one ODE / SDE step per method and form and the SDE's last steps
    ("steps"), and a whole dopri5 solve ("dopri5"): the families named in `parts`. Returns rows.

    dopri5_tol: both solvers are adaptive with rtol 1e-3 and take different steps (diffrax stops at t1,
    torchdiffeq steps past it and interpolates back), so they agree to the solver tolerance, not to
    rounding: 2 rtol, as tests/test_transport_integrators.py measures them against a float64 solution.
    """
    import torch
    if not config.learn_sigma:
        raise ValueError("SiT's network has learn_sigma=True (its forward drops the variance half)")
    net, params = _prepare(ref, config, state_dict, seed, log)
    net.eval()
    sides = flow_sides(net, params, config, batch, seed)
    apply, model_fn, ref_fn, x, t, y, shape = (sides.apply, sides.model_fn, sides.ref_fn, sides.x, sides.t, sides.y,
                                               sides.shape)
    c, ty = config.in_channels, torch.from_numpy(y)

    rows = []
    with torch.no_grad():
        if "forward" in parts:
            rows.append(compare("converted forward (sigma half dropped)", model_fn(x, t),
                                nhwc(net(nchw(x), torch.from_numpy(t), ty)), tol))
            x2, t2 = np.concatenate([x, x]), np.concatenate([t, t])
            y2 = np.concatenate([y, np.full_like(y, config.num_classes)])
            ours = forward_with_cfg(apply, cfg_scale, min(3, c), out_channels=c)(x2, t2, jnp.asarray(y2, jnp.int32))
            want = nhwc(net.forward_with_cfg(nchw(x2), torch.from_numpy(t2), torch.from_numpy(y2), cfg_scale))
            rows.append(compare(f"guided forward (cfg {cfg_scale})", ours, want, tol))
        if "loss" in parts:
            rows += _loss_rows(ref, model_fn, ref_fn, shape, np.random.default_rng(seed + 1), tol)
        if "steps" in parts:
            rows += _step_rows(ref, model_fn, ref_fn, x, np.random.default_rng(seed + 2), tol)
        if "dopri5" in parts:   # a whole solve from noise at t = 0 to data at t = 1, SiT's default ODE
            fn = ref.transport.Sampler(ref.transport.create_transport()).sample_ode(
                sampling_method="dopri5", num_steps=2, atol=1e-6, rtol=1e-3)
            want = nhwc(fn(nchw(x), ref_fn)[-1])
            got, nfe = jax.jit(lambda a: sit_samplers.sample_ode(Transport(), model_fn, a, method="dopri5",
                                                                 return_nfe=True))(jnp.asarray(x))
            log(f"dopri5: {int(nfe)} network evaluations (ours)")
            rows.append(compare("dopri5 solve vs torchdiffeq", got, want, dopri5_tol))
    return rows


def _loss_rows(ref: SiTReference, model_fn, ref_fn, shape, rng, tol: float) -> list[Row]:
    """The training loss for every path x prediction x weighting with the same x1, x0 and t: the reference
    draws through its own `Transport.sample` (x0 = randn_like, t = rand * (t1 - t0) + t0), fed our arrays,
    and ours gets the t it computed."""
    import torch
    x1 = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    x0 = rng.standard_normal(shape).astype(np.float32)
    u = rng.random(shape[0]).astype(np.float32)
    rows = []
    for path in PATHS:
        for prediction in PREDICTIONS:
            for weight in LOSS_WEIGHTS:
                theirs = ref.transport.create_transport(path, prediction, weight, None, None)
                drawn = {}
                original = theirs.sample
                theirs.sample = lambda a, _o=original: drawn.setdefault("draw", _o(a))
                with fixed_draws(randn_like=nchw(x0), rand=torch.from_numpy(u)):
                    ref_loss = theirs.training_losses(ref_fn, nchw(x1), {})["loss"]
                t_ref = drawn["draw"][0].numpy()
                our_loss = training_losses(Transport(path, prediction, weight), model_fn, jnp.asarray(x1),
                                           t=jnp.asarray(t_ref), x0=jnp.asarray(x0))["loss"]
                rows.append(compare(f"loss {path}/{prediction}/{weight or 'none'}", our_loss, ref_loss.numpy(), tol))
    return rows


def _step_rows(ref: SiTReference, model_fn, ref_fn, x: np.ndarray, rng, tol: float) -> list[Row]:
    """One ODE step per method (three path x prediction pairs), one SDE step per method and diffusion form
    with identical noise, and the SDE's last steps (the default transport: Linear, velocity)."""
    import torch
    rows, tx = [], nchw(x)
    grid = sit_samplers.time_grid(0.3, 0.34, 2)   # torchdiffeq's fixed grid of 2 points: one step
    for path, prediction in (("Linear", "velocity"), ("GVP", "score"), ("VP", "noise")):
        theirs = ref.transport.create_transport(path, prediction, None, None, None)
        field = velocity_fn(Transport(path, prediction), model_fn)
        for method, step, kind in (("euler", sit_samplers.ode_euler_step, "euler"),
                                   ("heun", sit_samplers.ode_heun_step, "heun2")):
            solver = ref.transport.integrators.ode(theirs.get_drift(), t0=float(grid[0]), t1=float(grid[1]),
                                                   sampler_type=kind, num_steps=2, atol=1e-6, rtol=1e-3)
            want = nhwc(solver.sample(tx, ref_fn)[-1])
            got = step(field, jnp.asarray(x), jnp.float32(grid[0]), jnp.float32(grid[1]))
            rows.append(compare(f"ODE {method} step {path}/{prediction}", got, want, tol))

    noise = rng.standard_normal(x.shape).astype(np.float32)
    ours = Transport()
    for form in DIFFUSION_FORMS:   # t = 0.3, dt = 0.04, norm 0.9
        for method in ("euler", "heun"):
            theirs = ref.transport.create_transport("Linear", "velocity", None, None, None)
            theirs.path_sampler.compute_diffusion = intended_compute_diffusion(theirs.path_sampler)
            drift, diffusion = _sde_drift(ref.transport.Sampler(theirs), form, 0.9)
            solver = ref.transport.integrators.sde(drift, diffusion, t0=0.3, t1=0.34, num_steps=2,
                                                   sampler_type=method.capitalize())
            ref_step = solver._sde__Euler_Maruyama_step if method == "euler" else solver._sde__Heun_step
            with fixed_draws(randn=nchw(noise)):
                want = nhwc(ref_step(tx, tx, solver.t[0], ref_fn)[0])
            step = sit_samplers.sde_euler_step if method == "euler" else sit_samplers.sde_heun_step
            got = step(ours, model_fn, jnp.asarray(x), jnp.float32(solver.t[0].item()), solver.dt.numpy(),
                       jnp.asarray(noise), diffusion_form=form, diffusion_norm=0.9)[0]
            note = " (formula)" if form in UNRUNNABLE_FORMS else ""
            rows.append(compare(f"SDE {method} step, {form}{note}", got, want, tol))

    sampler = ref.transport.Sampler(ref.transport.create_transport())
    drift, _ = _sde_drift(sampler, "sigma", 1.0)
    for last_step in ("Mean", "Tweedie", "Euler"):   # at t1 = 1 - last_step_size
        _, t1 = sit_samplers.sde_interval(ours, diffusion_form="sigma", last_step=last_step, last_step_size=0.04)
        want = nhwc(_last_step_fn(sampler, drift, last_step, 0.04)(tx, torch.ones(x.shape[0]) * t1, ref_fn))
        got = sit_samplers.sde_last_step(ours, model_fn, jnp.asarray(x), t1, last_step=last_step,
                                         last_step_size=0.04, diffusion_form="sigma")
        rows.append(compare(f"SDE last step {last_step}", got, want, tol))
    return rows


def run_sit_training_comparison(ref: SiTReference, config: DiTConfig, *, transport: Transport = Transport(),
                                steps: int = 5, state_dict: dict | None = None, batch: int = 4, seed: int = 0,
                                ema_decay: float = 0.9999, loss_tol: float = 1e-5, param_tol: float = 5e-5,
                                log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """N steps of SiT's train.py update beside our jitted step (objective "sit"; parity/training.py).

    Reference: `transport.training_losses(model, x, dict(y=y))["loss"].mean()` with the model in train
    mode (label dropout), backward, `torch.optim.AdamW(lr=1e-4, weight_decay=0)`, then its update_ema
    over named_parameters (decay 0.9999). Both sides start from the same weights and get the same
    batches; each step the reference draws x0 and t through its own `Transport.sample` (fed our arrays)
    and its label dropout gets our mask, and ours gets the same x0, t and mask in batch['draws'].
    """
    import torch

    cfg = dataclasses.replace(config, scan_blocks=False)
    net, params = _prepare(ref, cfg, state_dict, seed, log)
    ema = sit_network(ref, cfg)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    net.train()
    backbone = _backbone(net)
    opt = reference_optimizer(net)
    theirs = ref.transport.create_transport(transport.path, transport.prediction, transport.loss_weight,
                                            transport.train_eps, transport.sample_eps)
    drawn = {}
    original_sample = theirs.sample
    theirs.sample = lambda a: drawn.__setitem__("draw", original_sample(a)) or drawn["draw"]
    shape = (batch, cfg.input_size, cfg.input_size, cfg.in_channels)

    def reference_step(k: int, rng):
        x1 = np.clip(rng.standard_normal(shape) * 0.5, -1, 1).astype(np.float32)
        y = rng.integers(0, cfg.num_classes, batch).astype(np.int64)
        x0 = rng.standard_normal(shape).astype(np.float32)
        u = rng.random(batch).astype(np.float32)
        drop = rng.random(batch) < cfg.class_dropout_prob
        if k == 0:
            drop[-1] = True   # a dropped label is exercised
        force_label_drop(backbone.y_embedder, drop)
        with fixed_draws(randn_like=nchw(x0), rand=torch.from_numpy(u)):
            loss = theirs.training_losses(net, nchw(x1), dict(y=torch.from_numpy(y)))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():   # SiT's update_ema
            live = dict(backbone.named_parameters())
            for name, p in _backbone(ema).named_parameters():
                p.mul_(ema_decay).add_(live[name].data, alpha=1 - ema_decay)
        t = drawn["draw"][0].numpy().astype(np.float32)
        return loss.detach().numpy(), {"image": x1, "label": y.astype(np.int32),
                                       "draws": {"t": t, "noise": x0, "drop": drop}}

    run, program = our_program(cfg, ema_decay=ema_decay, seed=seed, objective="sit", transport=dict(
        path=transport.path, prediction=transport.prediction, loss_weight=transport.loss_weight or "",
        train_eps=-1.0 if transport.train_eps is None else transport.train_eps,
        sample_eps=-1.0 if transport.sample_eps is None else transport.sample_eps))
    if run.objective != transport:
        raise AssertionError(f"the run's objective {run.objective} is not the compared {transport}")
    return compare_training(program, params, cfg, reference_step, lambda: (flat_torch(net), flat_torch(ema)),
                            steps=steps, seed=seed, loss_tol=loss_tol, param_tol=param_tol, log=log)
