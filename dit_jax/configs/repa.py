"""REPA (Yu et al., sihyun-yu/REPA): SiT with its tokens after block 8 aligned to frozen DINOv2-B patch
features, exactly as REPA's train.py, for every SiT size at 256 or 512 px, and the digits demo.

    dit-jax train --config configs/repa.py:XL/2 --workdir gs://bucket/repa-sitxl2-256 --config.data.name=imagenet256_repa --config.repa.weights=/data/weights/dinov2_vitb14_pretrain.pth

The digits demo with REPA (2 CPU cores, minutes): --config configs/repa.py:digits --workdir runs/repa-digits

Argument: a SiT size (S, B, L, XL with patch 2, 4 or 8), optionally '-512', or 'digits' (the laptop demo
with the demo's digit classifier as the frozen encoder). Recipe (REPA's train.py defaults and the paper):
SiT without learned sigma (REPA's SiT predicts v only); REPA's SILoss (linear path, t = 0 data,
v prediction, t ~ U[0, 1)); projector MLP hidden -> 2048 -> 2048 -> 768 on the tokens after block 8
(encoder_depth 8; the paper uses 4 for S and 8 for B/L/XL); proj_coeff 0.5; label dropout 0.1; AdamW lr 1e-4,
betas (0.9, 0.999), no weight decay; gradient-norm clip 1.0; EMA 0.9999; global batch 256; 4M iterations for
XL/2 (the paper's 800 epochs), 400K otherwise. Data as REPA: ADM center crop, no random flip, SD VAE latents
(REPA encodes with sd-vae-ft-mse and scale 0.18215) from a latent dataset that also holds each image
(`dit-jax extract-latents --with-images`), the image going to DINOv2 (x/255, ImageNet normalisation, bicubic
to 224 px) inside the step.

Hardware and time: not measured here (no accelerator this session); the REPA step is SiT-XL/2's plus a
DINOv2-B forward at 224 px (about 11% more FLOPs per image) and the projector. Expected result (the paper,
SiT-XL/2 + REPA at 4M iterations, FID-50K): 1.80 without guidance (SDE, 250 steps), 1.42 with guidance 1.8
on t <= 0.7 (REPA's guidance interval). Protocol and commands: experiments/repa_sitxl2_256/README.md.
"""

from dit_jax.configs.dit import get_config as dit_config
from dit_jax.configs.demo import get_config as demo_config

REPA_STEPS = {"XL/2": 4_000_000}
SAMPLER, STEPS = "repa-sde", "250"     # REPA's FID protocol: Euler-Maruyama, 250 steps


def _repa(c, encoder: str, encoder_depth: int, projector_dim: int = 2048):
    c.model.learn_sigma = False
    c.repa.update(encoder=encoder, encoder_depth=encoder_depth, proj_coeff=0.5, projector_dim=projector_dim,
                  path="linear", prediction="v", weighting="uniform")
    c.optim.update(grad_clip=1.0, weight_decay=0.0)
    c.sample.update(sampler=SAMPLER, cfg_interval=(0.0, 0.7))
    return c


def get_config(arg: str = "XL/2"):
    if arg == "digits":
        c = _repa(demo_config(), "digits-mlp", encoder_depth=2, projector_dim=256)
        c.sample.update(steps="100", cfg_interval=(0.0, 1.0))
        c.evals.digits.update(sampler=SAMPLER, steps="100", cfg_interval=(0.0, 1.0))
        return c
    name, _, res = arg.partition("-")
    c = dit_config(arg)
    c.model.name = f"SiT-{name} + REPA"
    c = _repa(c, "dinov2-vit-b", encoder_depth=4 if name.startswith("S/") else 8)
    c.data.update(latents="dataset", random_flip=False, name="imagenet256_repa" if not res else "imagenet512_repa")
    c.data.vae = ""   # the latent dataset needs none; grids and FID decode with --config.data.vae (sd-vae-ft-mse)
    c.total_steps = REPA_STEPS.get(name, 400_000) if not res else 4_000_000
    c.sample.update(steps=STEPS, cfg_scale=1.8)
    c.evals.fid.update(sampler=SAMPLER, steps=STEPS, cfg_scale=1.8, cfg_mode="all", cfg_interval=(0.0, 0.7))
    c.evals.digits.update(sampler=SAMPLER)
    return c
