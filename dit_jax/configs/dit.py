"""The paper's DiT training recipe for every named model, at 256 or 512 px.

    dit-jax train --config configs/dit.py:XL/2 --workdir gs://bucket/dit-xl2-256 --config.data.vae=gs://bucket/sd-vae-ft-ema
    dit-jax train --config configs/dit.py:B/4-512 --workdir runs/b4-512 --config.batch_size=64 --config.data.vae=weights/sd-vae-ft-ema

Argument: a model name (S, B, L, XL with patch 2, 4 or 8), optionally '-512' for 512 px
(64x64 latents). Recipe (all models): AdamW lr 1e-4, no weight decay, global batch 256, EMA
0.9999, label dropout 0.1, 1000-step linear schedule, learned sigma. Steps: 400K (the paper's
Table 4 runs); XL/2 to 7M at 256 px and 3M at 512 px for the headline numbers.

Hardware and time: the paper trained XL/2 on a TPU v3-256 pod at about 5.7 steps/s (about
1,460 img/s). Expected result (FID-50K, 250 DDPM steps, no guidance, at 400K steps, Table 4):
S/2 68.4, B/2 43.5, L/2 23.3, XL/2 19.5; XL/2 at 7M steps with cfg 1.5: 2.27.

Data: ImageNet through TFDS `imagenet2012` with the reference's ADM center crop and random flip;
the model trains on Stable Diffusion VAE latents (4 x 32 x 32 at 256 px), encoded inside the step
as the reference does (`--config.data.vae=DIR` from `dit-jax convert --from-diffusers-vae`), or
read from a latent dataset (`dit-jax extract-latents`, then `--config.data.latents=dataset
--config.data.name=NAME`), which is much faster.
"""

from dit_jax.configs.base import base_config, model_fields

STEPS = {"XL/2": 7_000_000}


def get_config(arg: str = "XL/2"):
    name, _, res = arg.partition("-")
    resolution = int(res) if res else 256
    if resolution not in (256, 512):
        raise ValueError(f"resolution must be 256 or 512, got {res!r} (use e.g. 'XL/2-512')")
    c = base_config()
    # Mixed precision on accelerators: float32 params, AdamW moments and EMA; bf16 matmuls and
    # attention (cuDNN flash attention on GPUs, XLA on TPUs and CPUs). `--config.model.dtype=float32`
    # computes as the reference's TF32 default does, only slower.
    c.model = model_fields(name, input_size=resolution // 8, in_channels=4, num_classes=1000,
                           dtype="bfloat16", attention="cudnn")
    c.data.image_size = resolution
    c.data.latents = "encode"  # the reference: VAE-encode each batch in the step (or "dataset": extracted latents)
    c.data.vae = ""            # set to a `dit-jax convert --from-diffusers-vae` output (sd-vae-ft-ema or -mse)
    c.total_steps = STEPS.get(name, 400_000) if resolution == 256 else 3_000_000
    return c
