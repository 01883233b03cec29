"""The laptop demo: a small class-conditional DiT on the 1,797 8x8 digits scikit-learn ships.

    dit-jax train                                   # this config, into workdir/demo
    dit-jax train --config configs/demo.py --workdir runs/demo-500 --config.total_steps=500

No download: the digits are built once into a TFDS ArrayRecord dataset. Hardware and time: 2 CPU
cores, about 6 minutes including the evaluations, more on a loaded machine (every measured time:
docs/demo.md). Result: EMA sample grids in WORKDIR/samples, and the demo's quality scores (class
accuracy of guided samples under a digit classifier, Frechet distance in its feature space) printed
and written to WORKDIR/demo_scores.json; the measured scores are in docs/demo.md.
"""

import ml_collections

from dit_jax.configs.base import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.model = ml_collections.ConfigDict(dict(
        name="demo DiT (8x8x1 digits)", input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4,
        num_heads=4, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True, dtype="float32",
        param_dtype="float32", attention="xla", scan_blocks=False, remat="none",
        # LightningDiT's options (docs/lightningdit.md), off: the DiT.
        use_qknorm=False, use_rmsnorm=False, use_swiglu=False, use_rope=False, wo_shift=False))
    c.data.update(name="digits", image_size=8, channels=1, num_classes=10, random_flip=False, worker_count=0)
    # A short run: a higher learning rate and a faster EMA than the paper's 1e-4 / 0.9999. Small
    # batches: on 2 CPU cores a batch of 32 runs about 5x more images/s than a batch of 128.
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.batch_size = 32
    c.total_steps = 4000
    c.ema_decay = 0.999
    c.log_every = 100
    c.checkpoint_every = 500
    c.sample.update(every=1000, num=40, steps="100", cfg_scale=2.0)
    c.evals.digits.update(kind="digits", every=2000, num_samples=500, steps="100", cfg_scale=2.0, cfg_mode="all")
    return c
