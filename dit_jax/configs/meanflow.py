"""MeanFlow's training recipe (Gsunshine/meanflow: configs/default.py, run_b4.yml; the paper's Table 4).

    dit-jax train --config configs/meanflow.py:XL/2 --workdir gs://bucket/mf-xl2-256 --config.data.vae=gs://bucket/sd-vae-ft-mse
    dit-jax train --config configs/meanflow.py:B/4 --workdir runs/mf-b4 --config.data.vae=weights/sd-vae-ft-mse

The demo on the digits: `--config configs/meanflow.py:demo` (2 CPU cores: see docs/meanflow.md).

Argument: a model name (S, B, L, XL with patch 2, 4 or 8) at 256 px, or 'demo' (the laptop demo's
8x8 digits, configs/demo.py, trained with MeanFlow). The network is the DiT backbone with MeanFlow's
second time input (h = t - r through its own embedder), no learned sigma. Recipe (official default.py):
AdamW lr 1e-4, b1 0.9, **b2 0.95**, no weight decay, global batch 256, EMA 0.9999 from the start;
(t, r) each logit-normal(-0.4, 1.0), 75% of the rows with r = t; the adaptive weight with p = 1,
eps 0.01; class dropout 0.1; training-time guidance omega 1.0, kappa 0.5 on t in [0, 1] (the official
default and MF-B/4's setting). MF-XL/2 (and L/2, M/2) take the paper's Table 4 guidance: omega 0.2,
kappa 0.92 (effective scale omega / (1 - kappa) = 2.5) on t in [0, 0.75] (L/2: [0, 0.8]). These three
values are not in the official repository (only B/4's run_b4.yml is); they are the ones the public
reproductions use for the paper's settings: check them against the paper before a long run.

Length: 240 epochs of ImageNet (1,281,167 images, 5,004 steps of 256 per epoch): 1,200,960 steps.
Expected result (1-NFE FID-50K, EMA weights, no sampling guidance): MF-B/4 11.4 (the released sanity
checkpoint; the repository's run 11.35), MF-XL/2 3.43. Sampling: the `meanflow` sampler with 1 step
(the official default schedule [1, 0]); guidance was trained in, so cfg_scale is not applied.

Data as configs/dit.py, with the official VAE: sd-vae-ft-mse latents (scale 0.18215) sampled from the
posterior at each step; the official code reads cached latents of randomly flipped images.
"""

from dit_jax.configs.dit import get_config as dit_config

EPOCH_STEPS = 5004                 # ImageNet train (1,281,167) // 256, the official loader's drop_last
PAPER_GUIDANCE = {                 # omega, kappa, t_start, t_end: the paper's Table 4 (see the docstring)
    "XL/2": (0.2, 0.92, 0.0, 0.75), "L/2": (0.2, 0.92, 0.0, 0.8), "M/2": (0.2, 0.92, 0.0, 0.8)}


def meanflow_fields(c):
    """MeanFlow on top of any DiT config: the network, the objective, the optimiser, the samplers."""
    c.model.learn_sigma = False
    c.model.second_time_input = True
    c.model.class_dropout_prob = 0.1     # the null row; MeanFlow drops classes itself (meanflow.class_dropout_prob)
    # The JVP needs forward-mode autodiff through attention: cuDNN's and splash's kernels are custom_vjp only.
    c.model.attention = "xla"
    c.objective = "meanflow"
    c.optim.b2 = 0.95
    c.sample.update(sampler="meanflow", steps="1", cfg_scale=1.0)
    c.evals.fid.update(sampler="meanflow", steps="1", cfg_scale=1.0)
    c.evals.digits.update(sampler="meanflow", steps="1", cfg_scale=1.0)
    return c


def demo_config():
    from dit_jax.configs.demo import get_config as demo
    c = meanflow_fields(demo())
    c.model.name = "demo MeanFlow DiT (8x8x1 digits)"
    return c


def get_config(arg: str = "XL/2"):
    if arg == "demo":
        return demo_config()
    if "-" in arg:
        raise ValueError(f"configs/meanflow.py trains at 256 px only (the paper's setting), got {arg!r}")
    c = meanflow_fields(dit_config(arg))
    c.model.name = f"MF-{arg}"
    c.total_steps = 240 * EPOCH_STEPS
    omega, kappa, t_start, t_end = PAPER_GUIDANCE.get(arg, (1.0, 0.5, 0.0, 1.0))
    c.meanflow.update(omega=omega, kappa=kappa, t_start=t_start, t_end=t_end)
    return c
