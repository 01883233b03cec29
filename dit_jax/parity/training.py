"""The training comparison, written once: N steps of a reference's update (its train.py) beside our
jitted train step (the run's own program, train/programs.py, on one device with the reference's
recipe: AdamW lr 1e-4 without weight decay, EMA), both fed the same batches and random draws.

A reference plugs in with two functions (dit.py and sit.py do; REPA, MeanFlow and LightningDiT can):
`reference_step(k, rng)` runs the reference's k-th update on a batch it draws from `rng` and returns
(its loss, the batch our step gets: image, label and the draws it must use), and `reference_weights()`
returns its params and EMA flattened as `flat_torch` does. Rows: the loss of every step, then the
final params and EMA (max over all tensors, relative to the largest reference value). The params get
their own tolerance: each Adam step moves a weight by about lr * g / (|g| + eps), which for gradients
near eps turns float32 rounding into up to lr.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.models.dit import DiTConfig
from dit_jax.parity.common import Row, compare

REFERENCE_OPTIM = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0, grad_clip=0.0)


def flat_official(params, config: DiTConfig) -> np.ndarray:
    """Our params in the official layout, every tensor but pos_embed, in name order, as one vector."""
    from dit_jax.convert.dit_torch import to_torch
    sd = to_torch(jax.device_get(params), config)
    return np.concatenate([sd[k].ravel() for k in sorted(sd) if k != "pos_embed"])


def flat_torch(module) -> np.ndarray:
    """A torch module's state dict as flat_official lays ours out."""
    sd = module.state_dict()
    return np.concatenate([sd[k].detach().numpy().ravel() for k in sorted(sd) if k != "pos_embed"])


def our_program(config: DiTConfig, *, ema_decay: float, seed: int, objective: str = "ddpm", transport=None):
    """(run, train program) of `config`'s model with the reference's recipe, on one device, fed x0 as given."""
    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.run import config_for_model, make_run
    from dit_jax.train.programs import build_train_step
    run_config = config_for_model(config)
    run_config.optim.update(REFERENCE_OPTIM)
    run_config.update(ema_decay=ema_decay, seed=seed, objective=objective)
    if transport is not None:
        run_config.transport.update(transport)
    run_config.data.latents = ""  # x0 given as it is, as the references' training_losses take it
    run = make_run(run_config, vae=None, mesh=make_mesh(devices=jax.devices()[:1]))
    return run, build_train_step(run)


def reference_optimizer(module):
    """The references' optimizer: torch.optim.AdamW(lr=1e-4, weight_decay=0)."""
    import torch
    return torch.optim.AdamW(module.parameters(), lr=REFERENCE_OPTIM["lr"], weight_decay=0)


def force_label_drop(embedder, drop: np.ndarray) -> None:
    """The reference's label dropout made to drop exactly `drop` (ours gets the same mask in its draws)."""
    import torch
    mask = torch.from_numpy(drop)
    embedder.token_drop = lambda labels, force_drop_ids=None: torch.where(mask, embedder.num_classes, labels)


def compare_training(program, params, config: DiTConfig, reference_step: Callable, reference_weights: Callable, *,
                     steps: int, seed: int, loss_tol: float, param_tol: float,
                     log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """`steps` updates on both sides from the same weights (`params`: the reference's, converted)."""
    state = program.init(jax.tree.map(jnp.asarray, params))
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(steps):
        ref_loss, batch = reference_step(k, rng)
        state, metrics = program.step(state, jax.tree.map(jnp.asarray, batch), None)
        log(f"step {k + 1}: loss ours {float(metrics['loss']):.7f} reference {float(ref_loss):.7f}")
        rows.append(compare(f"step {k + 1} loss", metrics["loss"], ref_loss, loss_tol))
    ref_params, ref_ema = reference_weights()
    rows.append(compare(f"params after {steps} steps", flat_official(state.params, config), ref_params, param_tol))
    rows.append(compare(f"EMA after {steps} steps", flat_official(state.ema_params, config), ref_ema, param_tol))
    return rows
