"""What every comparison with the PyTorch code shares: a row of the report, the reference's DiT built
with our architecture, its zero-initialised layers randomised, identical noise, and layouts.

Both sides get the same weights (random ones with the zero-initialised layers randomised too, or a
given checkpoint), the same inputs and the same noise; each row reports the largest absolute
difference and the relative error max|ours - ref| / max|ref|.
"""

from __future__ import annotations

import dataclasses
import types
from contextlib import contextmanager
from typing import Callable

import numpy as np

from dit_jax.convert.dit_torch import from_torch
from dit_jax.models.dit import DiT, DiTConfig


@dataclasses.dataclass
class Row:
    name: str
    max_abs: float
    rel: float
    tol: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rel) and self.rel <= self.tol)


def compare(name: str, ours, ref, tol: float) -> Row:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"{name}: shapes differ, ours {ours.shape} vs reference {ref.shape}")
    diff = float(np.max(np.abs(ours - ref)))
    return Row(name, diff, diff / max(float(np.max(np.abs(ref))), 1e-30), tol)


def format_table(rows: list[Row]) -> str:
    w = max([38] + [len(r.name) for r in rows])
    lines = [f"{'quantity':<{w}} {'max abs diff':>13} {'rel diff':>10} {'tolerance':>10}  result",
             "-" * (w + 44)]
    for r in rows:
        lines.append(f"{r.name:<{w}} {r.max_abs:>13.3e} {r.rel:>10.2e} {r.tol:>10.0e}  {'ok' if r.ok else 'FAIL'}")
    return "\n".join(lines)


def torch_model(models: types.ModuleType, config: DiTConfig):
    """The reference DiT built with the same architecture as `config`."""
    return models.DiT(input_size=config.input_size, patch_size=config.patch_size, in_channels=config.in_channels,
                      hidden_size=config.hidden_size, depth=config.depth, num_heads=config.num_heads,
                      mlp_ratio=config.mlp_ratio, class_dropout_prob=config.class_dropout_prob,
                      num_classes=config.num_classes, learn_sigma=config.learn_sigma)


def randomize_zero_layers(model, seed: int = 0, std: float = 0.02) -> int:
    """Fill every all-zero parameter (adaLN, final layer, biases) with N(0, std): with them at zero
    the blocks are identities and a comparison would prove little. Returns how many were filled."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    filled = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed" and not torch.any(p != 0):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
                filled += 1
    return filled


@contextmanager
def fixed_randn_like(noise_nchw):
    """Make the reference's `torch.randn_like` return the given noise (identical noise per step)."""
    import torch
    original = torch.randn_like
    torch.randn_like = lambda x, *a, **k: noise_nchw.to(dtype=x.dtype).clone()
    try:
        yield
    finally:
        torch.randn_like = original


def nchw(x):
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def reference_and_ours(models, config: DiTConfig, state_dict: dict | None, seed: int, log: Callable[[str], None]):
    """(the reference's DiT in eval mode, our DiT with its blocks unrolled, our params converted from the
    reference's): from `state_dict` when given, else the reference's random init with its zero-initialised
    layers randomised (so that the comparison sees every weight)."""
    import torch
    torch.manual_seed(seed)
    ref = torch_model(models, config).eval()
    if state_dict is not None:
        ref.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
    else:
        log(f"random weights; {randomize_zero_layers(ref, seed)} zero-initialised tensors randomised")
    params, _ = from_torch({k: v.detach().numpy() for k, v in ref.state_dict().items()}, config)
    return ref, DiT(dataclasses.replace(config, scan_blocks=False)), params


@dataclasses.dataclass
class FlowSides:
    """Both sides of a flow-matching comparison on the same random inputs: `apply(x, t, y)` our jitted
    forward; `model_fn(x, t)` it on the labels, its variance half dropped as SiT's forward drops it;
    `ref_fn(x, t)` the reference network (NCHW torch tensors) on the same labels."""
    apply: Callable
    model_fn: Callable
    ref_fn: Callable
    x: np.ndarray     # (B, H, W, C) standard normal
    t: np.ndarray     # (B,) in [0.05, 0.95]
    y: np.ndarray     # (B,) int64 labels
    shape: tuple


def flow_sides(net, params, config: DiTConfig, batch: int, seed: int) -> FlowSides:
    """The inputs and functions SiT's and LightningDiT's comparisons share (unrolled blocks: the
    converted weights' layout)."""
    import jax
    import jax.numpy as jnp
    import torch

    from dit_jax.transport.guidance import split_learned_sigma
    dit = DiT(dataclasses.replace(config, scan_blocks=False))
    c = config.in_channels
    apply = jax.jit(lambda x, t, y: dit.apply({"params": params}, x, t, y))
    rng = np.random.default_rng(seed)
    shape = (batch, config.input_size, config.input_size, c)
    x = rng.standard_normal(shape).astype(np.float32)
    t = rng.uniform(0.05, 0.95, batch).astype(np.float32)
    y = rng.integers(0, config.num_classes, batch).astype(np.int64)
    ty, yj = torch.from_numpy(y), jnp.asarray(y, jnp.int32)
    return FlowSides(apply=apply, model_fn=lambda xt, tm: split_learned_sigma(apply(xt, tm, yj), c),
                     ref_fn=lambda xt, tm: net(xt, tm, ty), x=x, t=t, y=y, shape=shape)
