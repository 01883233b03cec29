"""Side-by-side comparison with LightningDiT's PyTorch code: its `models/lightningdit.py` and `transport/`
from a hustvl/LightningDiT checkout, or the statement of them in tests/lightningdit_reference.

Both sides get the same weights (the reference's random init with every zero-initialised tensor and
every norm weight randomised, or a given state dict), converted with dit_jax.convert.lightningdit_torch;
rows are `dit_jax.parity.Row` (max abs and max|ours - ref| / max|ref|). Rows: the forward, the guided
forward (3 channels), the conversion back (ours -> torch state dict, exact), the training terms (mse,
cosine, their sum, t) with injected draws for each of use_lognorm x use_cosine_loss, and a whole Euler
ODE solve with a timestep shift.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import types
from contextlib import contextmanager
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.convert.lightningdit_torch import from_torch, lightningdit_kwargs, to_torch
from dit_jax.models.dit import DiTConfig
from dit_jax.parity.common import Row, compare, flow_sides, nchw, nhwc
from dit_jax.parity.sit import fixed_draws
from dit_jax.transport import integrators as sit_samplers
from dit_jax.transport.guidance import forward_with_cfg, split_learned_sigma
from dit_jax.transport.transport import Transport, logit_normal_time, training_losses

PARTS = ("forward", "loss", "ode")
FIXED_TABLES = ("pos_embed", "feat_rope.freqs_cos", "feat_rope.freqs_sin")


@dataclasses.dataclass
class LightningReference:
    models: types.ModuleType      # models.lightningdit (LightningDiT)
    transport: types.ModuleType   # the transport package (create_transport, Sampler)
    official: bool


def _stub_fairscale() -> bool:
    """Its models/rmsnorm.py imports fairscale's model-parallel layers and never uses them: stub them when
    fairscale is not installed. True when stubbed."""
    try:
        importlib.import_module("fairscale.nn.model_parallel.layers")
        return False
    except ImportError:
        pass
    names = ("fairscale", "fairscale.nn", "fairscale.nn.model_parallel", "fairscale.nn.model_parallel.initialize",
             "fairscale.nn.model_parallel.layers")
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    layers = sys.modules["fairscale.nn.model_parallel.layers"]
    layers.ColumnParallelLinear = layers.RowParallelLinear = layers.ParallelEmbedding = None
    return True


def load_lightningdit_reference(path: str, log: Callable[[str], None] = lambda s: None) -> LightningReference:
    """`models.lightningdit` and `transport` from `path`, imported under their own (absolute) names as the
    checkout needs, then taken out of sys.modules again (another checkout's `models` may be loaded beside)."""
    path = os.path.abspath(path)
    if not (os.path.isfile(os.path.join(path, "models", "lightningdit.py"))
            and os.path.isdir(os.path.join(path, "transport"))):
        raise FileNotFoundError(f"{path} has no models/lightningdit.py and transport/: pass the root of a "
                                "hustvl/LightningDiT checkout (or tests/lightningdit_reference)")
    official = os.path.isfile(os.path.join(path, "models", "rmsnorm.py"))
    if official:
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")   # its modules are decorated with torch.compile
        import torch._dynamo
        torch._dynamo.config.disable = True
        if _stub_fairscale():
            log("fairscale is not installed: stubbed (models/rmsnorm.py imports it and does not use it)")
    ours = lambda key: key in ("models", "transport") or key.startswith(("models.", "transport."))
    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    for key in saved:
        del sys.modules[key]
    sys.path.insert(0, path)
    try:
        models = importlib.import_module("models.lightningdit")
        transport = importlib.import_module("transport")
    except ImportError as e:
        raise ImportError(f"importing LightningDiT's code failed ({e}); the checkout needs timm, einops, "
                          "torchdiffeq and scipy") from None
    finally:
        sys.path.remove(path)
        for key in [k for k in sys.modules if ours(k)]:
            del sys.modules[key]
        sys.modules.update(saved)
    return LightningReference(models, transport, official)


def randomize(net, seed: int) -> int:
    """Every all-zero tensor (adaLN, final layer, biases) to N(0, 0.02^2) and every all-one one (norm
    weights) to 1 + N(0, 0.1^2): at their init values the blocks are identities and the norms' weights
    invisible. Returns how many were changed."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name == "pos_embed":
                continue
            if not torch.any(p != 0):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif not torch.any(p != 1):
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.1)
            else:
                continue
            changed += 1
    return changed


def prepare(ref: LightningReference, config: DiTConfig, state_dict: dict | None = None, seed: int = 0,
            log: Callable[[str], None] = lambda s: None):
    """(the reference network in eval mode, our params converted from its state dict)."""
    import torch
    torch.manual_seed(seed)
    net = ref.models.LightningDiT(**lightningdit_kwargs(config))
    if state_dict is not None:
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
    else:
        log(f"random weights; {randomize(net, seed)} zero- or one-initialised tensors randomised")
    params, _ = from_torch({k: v.detach().numpy() for k, v in net.state_dict().items()}, config)
    return net.eval(), params


class _FixedNormal:
    """Stands in for scipy.stats.norm in the reference's transport module: rvs returns the given draws."""

    def __init__(self, draws):
        self.draws = np.asarray(draws, np.float64)

    def rvs(self, loc=0.0, scale=1.0, size=None):
        return loc + scale * self.draws


@contextmanager
def fixed_normal(ref: LightningReference, draws):
    module = ref.transport.transport
    saved = module.norm
    module.norm = _FixedNormal(draws)
    try:
        yield
    finally:
        module.norm = saved


def run_lightningdit_comparison(ref: LightningReference, config: DiTConfig, *, state_dict: dict | None = None,
                                batch: int = 4, cfg_scale: float = 4.0, seed: int = 0, tol: float = 1e-5,
                                ode_steps: int = 6, timestep_shift: float = 0.3, parts: tuple = PARTS,
                                log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """The rows of `parts` (see the module docstring) for `config` (its LightningDiT options included)."""
    import torch
    net, params = prepare(ref, config, state_dict, seed, log)
    sides = flow_sides(net, params, config, batch, seed)
    apply, model_fn, ref_fn, x, t, y, shape = (sides.apply, sides.model_fn, sides.ref_fn, sides.x, sides.t, sides.y,
                                               sides.shape)

    rows = []
    with torch.no_grad():
        if "forward" in parts:
            rows += _forward_rows(net, apply, params, config, x, t, y, cfg_scale, tol)
        if "loss" in parts:
            rows += _loss_rows(ref, model_fn, ref_fn, shape, np.random.default_rng(seed + 1), tol)
        if "ode" in parts:
            sample = ref.transport.Sampler(ref.transport.create_transport("Linear", "velocity", None, None, None))
            fn = sample.sample_ode(sampling_method="euler", num_steps=ode_steps, timestep_shift=timestep_shift)
            want = nhwc(fn(nchw(x), ref_fn)[-1])
            got = jax.jit(lambda a: sit_samplers.sample_ode(Transport(), model_fn, a, method="euler",
                                                            num_steps=ode_steps, timestep_shift=timestep_shift))(x)
            rows.append(compare(f"Euler ODE, {ode_steps} points, timestep_shift {timestep_shift}", got, want, tol))
    return rows


def _forward_rows(net, apply, params, config: DiTConfig, x, t, y, cfg_scale: float, tol: float) -> list[Row]:
    import torch
    c = config.in_channels
    ours = split_learned_sigma(apply(x, t, jnp.asarray(y, jnp.int32)), c)
    rows = [compare("forward (torch weights converted)", ours, nhwc(net(nchw(x), torch.from_numpy(t),
                                                                         torch.from_numpy(y))), tol)]
    x2, t2 = np.concatenate([x, x]), np.concatenate([t, t])
    y2 = np.concatenate([y, np.full_like(y, config.num_classes)])
    guided = forward_with_cfg(apply, cfg_scale, min(3, c), out_channels=c)(x2, t2, jnp.asarray(y2, jnp.int32))
    want = nhwc(net.forward_with_cfg(nchw(x2), torch.from_numpy(t2), torch.from_numpy(y2), cfg_scale))
    rows.append(compare(f"guided forward (cfg {cfg_scale}, 3 channels)", guided, want, tol))
    theirs = net.state_dict()
    back = to_torch(params, config)
    if sorted(back) != sorted(theirs):
        raise ValueError(f"our state dict names differ from the reference's: {sorted(set(back) ^ set(theirs))[:5]}")
    # Learned tensors come back bit for bit; the fixed tables (pos_embed, RoPE's cos/sin) are recomputed,
    # within a float32 rounding of the reference's.
    for label, names, row_tol in (("learned", [k for k in theirs if k not in FIXED_TABLES], 0.0),
                                  ("fixed tables", [k for k in theirs if k in FIXED_TABLES], 1e-6)):
        worst = max((compare(k, back[k], theirs[k].numpy(), tol) for k in names), key=lambda r: r.max_abs)
        rows.append(Row(f"ours -> torch, {label} (worst: {worst.name})", worst.max_abs, worst.rel, row_tol))
    return rows


def _loss_rows(ref: LightningReference, model_fn, ref_fn, shape, rng, tol: float) -> list[Row]:
    """The training terms with the same x1, x0 and time draws, for each use_lognorm x use_cosine_loss: the
    reference draws through its own Transport.sample (th.randn_like, th.rand, scipy's norm.rvs) fed our
    arrays; ours gets t from the same uniform or normal draws. Total = mean(cos) + mean(mse), as train.py."""
    import torch
    x1 = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    x0 = rng.standard_normal(shape).astype(np.float32)
    u = rng.random(shape[0]).astype(np.float32)
    n = (rng.standard_normal(shape[0]) * 1.5).astype(np.float32)   # float32 values, exact in float64 too
    rows = []
    for lognorm in (False, True):
        for cosine in (False, True):
            theirs = ref.transport.create_transport("Linear", "velocity", None, None, None,
                                                    use_cosine_loss=cosine, use_lognorm=lognorm)
            drawn = {}
            original = theirs.sample
            theirs.sample = lambda *a, _o=original: drawn.setdefault("draw", _o(*a))
            with fixed_draws(randn_like=nchw(x0), rand=torch.from_numpy(u)), fixed_normal(ref, n):
                terms = theirs.training_losses(ref_fn, nchw(x1), {})
            t_ref = drawn["draw"][0].numpy()
            ours_t = logit_normal_time(n) if lognorm else jnp.asarray(u)
            mine = training_losses(Transport(use_lognorm=lognorm, use_cosine_loss=cosine), model_fn,
                                   jnp.asarray(x1), t=ours_t, x0=jnp.asarray(x0))
            name = f"lognorm={lognorm} cosine={cosine}"
            rows.append(compare(f"t ({name})", mine["t"], t_ref, tol))
            rows.append(compare(f"mse ({name})", mine.get("mse", mine["loss"]), terms["loss"].numpy(), tol))
            if cosine:
                rows.append(compare(f"cos_loss ({name})", mine["cos_loss"], terms["cos_loss"].numpy(), tol))
                total = terms["cos_loss"].mean() + terms["loss"].mean()
                rows.append(compare(f"train.py loss ({name})", jnp.mean(mine["loss"]), total.numpy(), tol))
    return rows
