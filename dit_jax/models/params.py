"""DiT parameter trees and configs beside the model: the scanned/unscanned block layouts, and
whether stored weights fit a requested architecture (what `dit_jax.weights` and the converters share)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from dit_jax.models.dit import SIZES, DiTConfig


def config_name(cfg: DiTConfig) -> str:
    """'DiT-XL/2' when `cfg` has a named model's shape, else a short custom description."""
    for size, (depth, hidden, heads) in SIZES.items():
        if (cfg.depth, cfg.hidden_size, cfg.num_heads) == (depth, hidden, heads):
            return f"DiT-{size}/{cfg.patch_size}"
    return f"custom DiT (depth {cfg.depth}, hidden {cfg.hidden_size}, patch {cfg.patch_size})"


def check_config_matches(inferred: DiTConfig, given: DiTConfig | None) -> DiTConfig:
    """Return `given` (with its compute settings) if its architecture matches, else a clear error."""
    if given is None:
        return inferred
    check_fields({k: getattr(inferred, k) for k in _ARCHITECTURE}, given)
    return given


_ARCHITECTURE = {"depth": "{} blocks", "hidden_size": "hidden size {}", "num_heads": "{} heads",
                 "patch_size": "patch size {}", "input_size": "input size {}", "in_channels": "{} input channels",
                 "num_classes": "{} classes", "learn_sigma": "learn_sigma={}", "mlp_ratio": "MLP ratio {}"}


def check_fields(found: dict, given: DiTConfig) -> None:
    """'checkpoint has 28 blocks, DiT-S/2 has 12' for every architecture field in `found` that differs."""
    diffs = [f"checkpoint has {fmt.format(found[k])}, {config_name(given)} has {fmt.format(getattr(given, k))}"
             for k, fmt in _ARCHITECTURE.items() if k in found and found[k] != getattr(given, k)]
    if diffs:
        raise ValueError("checkpoint does not match the requested model: " + "; ".join(diffs))


def stack_blocks(params: Mapping, depth: int) -> dict:
    """blocks_0..blocks_{depth-1} -> the scanned layout {'blocks': {'block': stacked}}."""
    import jax
    blocks = [params[f"blocks_{i}"] for i in range(depth)]
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    out["blocks"] = {"block": jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)}
    return out


def unstack_blocks(params: Mapping, depth: int) -> dict:
    import jax
    out = {k: v for k, v in params.items() if k != "blocks"}
    for i in range(depth):
        out[f"blocks_{i}"] = jax.tree.map(lambda x: np.asarray(x)[i], params["blocks"]["block"])
    return out
