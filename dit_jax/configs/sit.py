"""SiT's training recipe (official train.py) for every named model, at 256 or 512 px.

    dit-jax train --config configs/sit.py:XL/2 --workdir gs://bucket/sit-xl2-256 --config.data.vae=gs://bucket/sd-vae-ft-ema
    dit-jax train --config configs/sit.py:B/4-512 --workdir runs/sit-b4-512 --config.batch_size=64 --config.data.vae=weights/sd-vae-ft-ema

Argument: a model name (S, B, L, XL with patch 2, 4 or 8), optionally '-512' for 512 px (64x64
latents). SiT trains the unchanged DiT backbone (learned-sigma output, whose variance half its
forward drops) with stochastic interpolants: objective "sit", Linear path (x_t = t x1 + (1 - t) x0,
t = 1 is data), velocity prediction, no loss weight, t ~ U[0, 1]. Recipe (all models, as train.py):
AdamW lr 1e-4, no weight decay, global batch 256, EMA 0.9999, label dropout 0.1. Steps: 400K; XL/2
to 7M at 256 px for the headline number (SiT releases only that model; 512 px gets DiT's 3M).

Hardware and time: the same network and step cost as configs/dit.py (the interpolant costs nothing
beside the transformer): DiT's XL/2 ran on a TPU v3-256 pod at about 5.7 steps/s. Expected result:
SiT-XL/2 at 7M steps, FID-50K 2.06 and IS 270.27 at 256 px with cfg 1.5 and the Heun ODE of 125 steps
(250 network evaluations); the protocol and commands are in experiments/sit_xl2_256/README.md.

Sampling: grids and evaluations default to SiT's reported protocol, the Heun ODE with 125 steps;
`--config.evals.fid.sampler=dopri5` is SiT's sample.py default (adaptive, atol 1e-6, rtol 1e-3), and
"sde-euler" / "sde-heun" its SDE (diffusion form "sigma", last step "Mean" of 0.04: config.transport).
Data as configs/dit.py: ImageNet with the ADM center crop and random flip, SD VAE latents encoded in
the step (`--config.data.vae=DIR`) or read from `dit-jax extract-latents` output.
"""

from dit_jax.configs.dit import get_config as dit_config

SIT_STEPS = {"XL/2": 7_000_000}
SAMPLER, STEPS = "heun", "125"   # SiT-XL/2's FID 2.06: Heun ODE, 125 steps, 250 network evaluations


def get_config(arg: str = "XL/2"):
    c = dit_config(arg)   # the DiT recipe: model, data, AdamW 1e-4 without weight decay, batch 256, EMA 0.9999
    name, _, res = arg.partition("-")
    c.model.name = f"SiT-{name}"
    c.objective = "sit"
    c.transport.update(path="Linear", prediction="velocity", loss_weight="", train_eps=-1.0, sample_eps=-1.0)
    if not res:
        c.total_steps = SIT_STEPS.get(name, 400_000)
    c.sample.update(sampler=SAMPLER, steps=STEPS)
    c.evals.fid.update(sampler=SAMPLER, steps=STEPS, cfg_scale=1.5, cfg_mode="reference")
    c.evals.digits.update(sampler=SAMPLER)
    return c
