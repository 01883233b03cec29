#!/usr/bin/env python
"""Compare dit-jax with the official PyTorch DiT, side by side, on the same weights and noise.

    git clone https://github.com/facebookresearch/DiT /path/to/DiT   # needs timm installed too
    python tools/compare_torch.py --reference /path/to/DiT                        # random DiT-S/2
    python tools/compare_torch.py --reference /path/to/DiT --model DiT-XL/2 \\
        --checkpoint DiT-XL-2-256x256.pt                                           # released weights
    python tools/compare_torch.py --reference /path/to/DiT --train 5              # 5 training steps
    python tools/compare_torch.py --reference /path/to/DiT --solvers --steps 25   # fast samplers vs diffusers
    git clone https://github.com/willisma/SiT /path/to/SiT                        # needs timm, torchdiffeq
    python tools/compare_torch.py --reference-sit /path/to/SiT                    # SiT rows, random SiT-S/2
    python tools/compare_torch.py --reference-sit /path/to/SiT --model SiT-XL/2 --checkpoint SiT-XL-2-256.pt
    python tools/compare_torch.py --reference-sit /path/to/SiT --train 5          # SiT's train.py update
    python tools/compare_torch.py --reference-sit tests/sit_reference --reference tests/torch_reference
    git clone https://github.com/facebookresearch/dinov2 /path/to/dinov2          # needs only torch
    python tools/compare_torch.py --reference-dinov2 /path/to/dinov2              # DINOv2 forward rows
    python tools/compare_torch.py --reference-meanflow /path/to/meanflow         # MeanFlow's JAX step and sampler
    TORCHDYNAMO_DISABLE=1 python tools/compare_torch.py --reference-lightningdit /path/to/LightningDiT \
        --lightningdit-options rmsnorm,swiglu,rope                               # needs timm, einops, torchdiffeq
    git clone https://github.com/sihyun-yu/REPA /path/to/REPA                      # needs timm, diffusers
    python tools/compare_torch.py --reference-repa /path/to/REPA --reference-dinov2 /path/to/dinov2

Imports the reference's `models.py` and `diffusion` package from --reference, builds both models
with the same weights (random, with the zero-initialised layers randomised, or a given .pt),
and prints max absolute / relative differences for the forward, the guided forward, the training
loss terms for fixed (x0, t, noise) (t = 0 with typical and extreme pixels too) and N respaced
sampling steps with identical noise. With --train N it instead runs N steps of the reference's
training update (train.py: loss mean, AdamW lr 1e-4, EMA 0.9999) beside our jitted train_step
on the same batches, timesteps, noise and label-drop masks, and prints the per-step losses and
the final params / EMA differences. With --solvers it instead samples --steps steps of each fast
sampler (dpm++2m, dpm++3m, unipc, ddim) with guidance: ours (dit_jax.diffusion.solvers.solve on
the converted model) beside diffusers' scheduler of the same name driving the reference model's
forward_with_cfg, from the same x_T, and compares every intermediate x_t (needs diffusers).
With --reference-sit it compares with SiT's code instead (dit_jax/parity/sit.py): the converted
forward (variance half dropped), the guided forward, the training loss of every path x prediction x
weighting with the same x0, x1 and t, one Euler/Heun ODE step, one Euler/Heun SDE step per diffusion
form with identical noise, the SDE's last steps, and a whole dopri5 solve against torchdiffeq (within
the solver tolerance); with --train N, N steps of SiT's train.py update. The statement of SiT's code in
tests/sit_reference takes its network from --reference (default: tests/torch_reference).
With --reference-dinov2 it compares our DINOv2 (dit_jax/models/dinov2.py) with the checkout's
DinoVisionTransformer built as torch.hub builds it, random weights converted from its state dict, at
224 and 448 px (interpolated position tables): all four forward_features outputs (--dinov2-models).
With --reference-lightningdit it compares with hustvl/LightningDiT's models/lightningdit.py and transport/
(dit_jax/parity/lightningdit.py; or the statement in tests/lightningdit_reference) for the model options
given: the converted and guided forward, the weights written back, the training terms (mse, cosine, t) with
injected draws for each use_lognorm x use_cosine_loss, and an Euler ODE solve with a timestep shift. The
checkout imports fairscale without using it (stubbed when missing) and torch.compile (turned off).
With --reference-repa (and --reference-dinov2 for the encoders REPA loads through torch.hub) it compares with
REPA's models/sit.py, loss.py, samplers.py and train.py (dit_jax/parity/repa.py) on a small random SiT with
projectors: REPA's preprocessing and DINOv2 features, the forward with projector outputs, SILoss for each
path x weighting, the Euler / Heun / Euler-Maruyama samplers with a guidance interval, and --train N (default
5) iterations of train.py's update; --break projector-block makes ours read the wrong block (must exit 1).
Exits 1 if any row is past its tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def import_reference(path: str):
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "models.py")) or not os.path.isdir(os.path.join(path, "diffusion")):
        raise SystemExit(f"error: {path} has no models.py and diffusion/: pass the root of a DiT checkout")
    sys.path.insert(0, path)
    try:
        models = importlib.import_module("models")
        diffusion = importlib.import_module("diffusion")
    except ImportError as e:
        raise SystemExit(f"error: importing the reference failed ({e}); the official models.py needs "
                         "`pip install timm`") from None
    return models, diffusion


def run_solver_comparison(models, config, *, state_dict=None, batch: int = 4, steps: int = 10,
                          spacing: str = "linspace", cfg_scale: float = 1.5, seed: int = 0, tol: float = 1e-5,
                          samplers=("dpm++2m", "dpm++3m", "unipc", "ddim"), log=print) -> list:
    """Rows comparing dit_jax.diffusion.solvers with diffusers' schedulers on the same DiT weights.

    Both sides guide the reference's way (forward_with_cfg: 3 eps channels) and drop the learned
    variance before the scheduler, as diffusers' DiT pipeline does. Each row is one sampler: the
    largest difference over every intermediate x_t, relative to that step's largest value.
    """

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from dit_jax.diffusion.gaussian import create_diffusion, linear_betas
    from dit_jax.diffusion.ancestral import guided_model_fn
    from dit_jax.diffusion.solvers import solve
    from dit_jax.parity.common import Row, compare, nchw, nhwc, reference_and_ours

    ref, ours, params = reference_and_ours(models, config, state_dict, seed, log)
    apply = jax.jit(lambda x, t, y: ours.apply({"params": params}, x, t, y))

    rng = np.random.default_rng(seed)
    c = config.in_channels
    x_T = rng.standard_normal((batch, config.input_size, config.input_size, c)).astype(np.float32)
    y = rng.integers(0, config.num_classes, batch).astype(np.int64)
    null = config.num_classes
    channels = min(3, c)
    model_fn = guided_model_fn(apply, jnp.asarray(y, jnp.int32), null, cfg_scale, channels)
    alphas_cumprod = create_diffusion("").alphas_cumprod
    common = dict(num_train_timesteps=1000, trained_betas=linear_betas(1000), timestep_spacing=spacing)
    schedulers = {
        "dpm++2m": DPMSolverMultistepScheduler(**common, solver_order=2, algorithm_type="dpmsolver++",
                                               solver_type="midpoint"),
        "dpm++3m": DPMSolverMultistepScheduler(**common, solver_order=3, algorithm_type="dpmsolver++",
                                               solver_type="midpoint"),
        "unipc": UniPCMultistepScheduler(**common, solver_type="bh2", predict_x0=True),
        "ddim": DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True),
    }
    y2 = torch.from_numpy(np.concatenate([y, np.full_like(y, null)]))
    rows = []
    for sampler in samplers:
        sch = schedulers[sampler]
        sch.set_timesteps(steps)
        x, theirs = nchw(x_T), []
        with torch.no_grad():
            for t in sch.timesteps:
                out = ref.forward_with_cfg(torch.cat([x, x]), t.expand(2 * batch), y2, cfg_scale)[:batch, :c]
                x = sch.step(out, t, x).prev_sample
                theirs.append(nhwc(x))
        _, traj = jax.jit(lambda x: solve(alphas_cumprod, model_fn, x, sampler=sampler, steps=steps,
                                          spacing=spacing, return_trajectory=True))(jnp.asarray(x_T))
        # Relative per step (the samples grow as the x0 predictions sharpen), the largest over the steps.
        per_step = [compare("", a, b, tol) for a, b in zip(np.asarray(traj), theirs)]
        row = Row(f"{steps} {sampler} steps ('{spacing}', cfg {cfg_scale})", max(r.max_abs for r in per_step),
                  max(r.rel for r in per_step), tol)
        log(f"{sampler}: max abs {row.max_abs:.3e}, rel {row.rel:.2e}")
        rows.append(row)
    return rows


def main(argv=None) -> int:
    from dit_jax import platforms
    platforms.choose()  # CPU alone where there is no accelerator (no libtpu probing)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="root of a facebookresearch/DiT checkout (with --reference-sit "
                                        "tests/sit_reference: the DiT it wraps, default tests/torch_reference)")
    ap.add_argument("--reference-sit", metavar="PATH",
                    help="root of a willisma/SiT checkout (or tests/sit_reference): compare the SiT rows")
    ap.add_argument("--reference-lightningdit", metavar="PATH",
                    help="root of a hustvl/LightningDiT checkout (or tests/lightningdit_reference)")
    ap.add_argument("--lightningdit-options", default="rmsnorm,swiglu,rope",
                    help="with --reference-lightningdit: comma-separated of qknorm, rmsnorm, swiglu, rope, wo_shift "
                         "(default: its release config), or 'none'")
    ap.add_argument("--model", default="DiT-S/2")
    ap.add_argument("--input-size", type=int, default=None, help="latent size (default 32, or the checkpoint's)")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--checkpoint", help="official .pt (released state dict or train.py checkpoint)")
    ap.add_argument("--key", default="ema", choices=("ema", "model"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="sampling steps to run on both sides")
    ap.add_argument("--respacing", default="250")
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-5, help="relative tolerance of the forward rows")
    ap.add_argument("--train", type=int, default=0, metavar="N",
                    help="compare N training steps (loss, params, EMA) instead of the forward/sampling rows")
    ap.add_argument("--solvers", action="store_true",
                    help="compare --steps steps of dpm++2m, dpm++3m, unipc and ddim with diffusers' schedulers "
                         "(needs diffusers) instead of the forward/sampling rows")
    ap.add_argument("--spacing", default="linspace", choices=("linspace", "leading", "trailing"),
                    help="timestep spacing of the --solvers rows")
    ap.add_argument("--solver-tol", type=float, default=1e-5, help="relative tolerance of the --solvers rows")
    ap.add_argument("--reference-dinov2", metavar="PATH", help="root of a facebookresearch/dinov2 checkout")
    ap.add_argument("--dinov2-models", default="",
                    help="comma-separated NAME[:depth=N] (default: dit_jax.parity.dinov2.DEFAULT_MODELS)")
    ap.add_argument("--reference-meanflow", metavar="PATH",
                    help="a Gsunshine/meanflow checkout (a JAX code): tools/compare_meanflow.py's rows")
    ap.add_argument("--reference-repa", metavar="PATH",
                    help="root of a sihyun-yu/REPA checkout (with --reference-dinov2: its encoders' code)")
    ap.add_argument("--repa-encoders", default="",
                    help="with --reference-repa: comma-separated DINOv2 names (default: "
                         "dit_jax.parity.repa.DEFAULT_ENCODERS)")
    ap.add_argument("--repa-depth", type=int, default=4, help="with --reference-repa: the SiT's depth")
    ap.add_argument("--repa-encoder-depth", type=int, default=2,
                    help="with --reference-repa: the block the projectors read (REPA's --encoder-depth)")
    ap.add_argument("--break", dest="break_", default="", metavar="WHAT",
                    help="with --reference-repa: a deliberate mismatch that must fail (projector-block)")
    args = ap.parse_args(argv)

    if args.reference_repa:
        return repa_main(args)
    if args.reference_meanflow:  # the official MeanFlow is JAX, not PyTorch: its own tool, reached from here too
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import compare_meanflow
        return compare_meanflow.main(["--reference-meanflow", args.reference_meanflow, "--tol", str(args.tol)])
    if args.reference_dinov2 and not getattr(args, "reference_repa", None):
        return dinov2_main(args)
    if not args.reference and not args.reference_sit and not args.reference_lightningdit:
        print("error: pass --reference (a DiT checkout), --reference-sit (a SiT checkout) or "
              "--reference-lightningdit (a LightningDiT checkout)", file=sys.stderr)
        return 2
    if args.reference_lightningdit:
        return lightningdit_main(args)
    if args.reference_sit:
        return sit_main(args)

    import jax
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32/bf16 passes on GPUs
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.dit import dit_config
    from dit_jax.models.params import config_name
    from dit_jax.parity.dit import run_comparison, run_training_comparison

    models, diffusion = import_reference(args.reference)
    state_dict = None
    overrides = {"num_classes": args.num_classes}
    if args.input_size:
        overrides["input_size"] = args.input_size
    config = dit_config(args.model, **overrides)
    if args.checkpoint:
        state_dict = torch_io.load_state_dict(args.checkpoint, args.key)
        if not args.input_size and "pos_embed" in state_dict:
            grid = int(round(state_dict["pos_embed"].shape[1] ** 0.5))
            config = dit_config(args.model, input_size=grid * config.patch_size, num_classes=args.num_classes)
        config = dit_torch.infer_config(state_dict, config)
    print(f"comparing {config_name(config)} (input {config.input_size}, {config.num_classes} classes) "
          f"with the reference at {args.reference}")
    if args.train < 0:
        print("error: --train needs a number of steps >= 1", file=sys.stderr)
        return 2
    if args.solvers and args.train:
        print("error: --solvers and --train are separate comparisons: pass one of them", file=sys.stderr)
        return 2
    if args.solvers and not 1 <= args.steps <= 1000:
        print(f"error: --steps must be between 1 and 1000 for --solvers, got {args.steps}", file=sys.stderr)
        return 2
    if args.solvers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("error: --solvers compares with diffusers' schedulers: pip install diffusers==0.42.1",
                  file=sys.stderr)
            return 2
        rows = run_solver_comparison(models, config, state_dict=state_dict, batch=args.batch, steps=args.steps,
                                     spacing=args.spacing, cfg_scale=args.cfg_scale, seed=args.seed,
                                     tol=args.solver_tol, log=print)
    elif args.train:
        rows = run_training_comparison(models, diffusion, config, steps=args.train, state_dict=state_dict,
                                       batch=args.batch, seed=args.seed, log=print)
    else:
        rows = run_comparison(models, diffusion, config, state_dict=state_dict, batch=args.batch,
                              sample_steps=args.steps, respacing=args.respacing, cfg_scale=args.cfg_scale,
                              seed=args.seed, tol=args.tol, log=print)
    return report(rows)


def dinov2_main(args) -> int:
    """--reference-dinov2: our DINOv2 beside the official DinoVisionTransformer, at 224 and 448 px."""
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32/bf16 passes on GPUs
    import torch
    from dit_jax.parity.dinov2 import DEFAULT_MODELS, import_official, official_model, run_dinov2_comparison
    try:
        vits = import_official(args.reference_dinov2)
        specs = [s for s in args.dinov2_models.split(",") if s] or list(DEFAULT_MODELS)
        built = []
        for spec in specs:
            torch.manual_seed(args.seed)
            built.append((spec, *official_model(vits, spec)))
    except (OSError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"comparing DINOv2 with the official code at {args.reference_dinov2} (torch {torch.__version__}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform})")
    rows = []
    for spec, model, config in built:
        rows += run_dinov2_comparison(model, config, sizes=((224, 224), (448, 448)), tol=args.tol,
                                      batch=min(args.batch, 2), seed=args.seed, label=f"{spec} ")
        print(f"{spec}: compared", flush=True)
    return report(rows)


def repa_main(args) -> int:
    """--reference-repa: REPA's encoder path, SiT forward, loss, samplers and train.py update (parity/repa.py)."""
    if not args.reference_dinov2:
        print("error: --reference-repa needs --reference-dinov2 PATH (a facebookresearch/dinov2 checkout): REPA "
              "loads its encoders through torch.hub, answered here from that checkout", file=sys.stderr)
        return 2
    if args.solvers or args.checkpoint or args.train < 0:
        print("error: --reference-repa compares random weights with its own rows: drop --solvers / --checkpoint, "
              "and give --train a number of steps >= 1", file=sys.stderr)
        return 2
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32/bf16 passes on GPUs
    import torch
    from dit_jax.models.dit import dit_config
    from dit_jax.parity.repa import (BREAKS, DEFAULT_ENCODERS, load_repa_reference, repa_encoder_name,
                                     run_repa_comparison)
    breaks = [b for b in args.break_.split(",") if b]
    if set(breaks) - set(BREAKS):
        print(f"error: --break: unknown {sorted(set(breaks) - set(BREAKS))}; choose from {list(BREAKS)}",
              file=sys.stderr)
        return 2
    try:
        ref = load_repa_reference(args.reference_repa, args.reference_dinov2, log=print)
        config = dit_config(args.model.replace("SiT-", "DiT-"), input_size=args.input_size or 32,
                            depth=args.repa_depth, num_classes=args.num_classes, learn_sigma=False)
        encoders = tuple(n for n in args.repa_encoders.split(",") if n) or DEFAULT_ENCODERS
        for name in encoders:
            repa_encoder_name(name)   # a ValueError naming the flag for anything but a DINOv2 name
        if not 1 <= args.repa_encoder_depth < config.depth:
            raise ValueError(f"--repa-encoder-depth {args.repa_encoder_depth} must be in [1, --repa-depth "
                             f"{config.depth})")
    except (OSError, ImportError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"comparing a REPA SiT (depth {config.depth}, hidden {config.hidden_size}, patch {config.patch_size}, "
          f"input {config.input_size}x{config.input_size}x{config.in_channels}, {config.num_classes} classes, "
          f"batch {args.batch}) with REPA's code at {args.reference_repa} and DINOv2's at {args.reference_dinov2} "
          f"(torch {torch.__version__}, jax {jax.__version__} on {jax.devices()[0].platform})", flush=True)
    rows = run_repa_comparison(ref, config, encoders=encoders, encoder_depth=args.repa_encoder_depth,
                               batch=args.batch, steps=args.steps, train_steps=args.train or 5,
                               cfg_scale=args.cfg_scale, seed=args.seed, tol=args.tol, breaks=breaks,
                               log=lambda s: print(s, flush=True))
    return report(rows)


def sit_main(args) -> int:
    """--reference-sit: the SiT rows, or with --train N SiT's training update."""
    if args.solvers:
        print("error: --solvers compares the DDPM solvers: drop it with --reference-sit", file=sys.stderr)
        return 2
    if args.train < 0:
        print("error: --train needs a number of steps >= 1", file=sys.stderr)
        return 2
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")  # no TF32/bf16 passes on GPUs
    from dit_jax.convert import dit_torch, torch_io
    from dit_jax.models.dit import dit_config
    from dit_jax.models.params import config_name
    from dit_jax.parity.sit import load_sit_reference, run_sit_comparison, run_sit_training_comparison

    dit_reference = args.reference or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                    "tests", "torch_reference")
    try:
        ref = load_sit_reference(args.reference_sit, dit_reference)
        model = args.model.replace("SiT-", "DiT-")
        overrides = {"num_classes": args.num_classes}
        if args.input_size:
            overrides["input_size"] = args.input_size
        config = dit_config(model, **overrides)
        state_dict = None
        if args.checkpoint:
            state_dict = torch_io.load_state_dict(args.checkpoint, args.key)
            if not args.input_size and "pos_embed" in state_dict:
                grid = int(round(state_dict["pos_embed"].shape[1] ** 0.5))
                config = dit_config(model, input_size=grid * config.patch_size, num_classes=args.num_classes)
            config = dit_torch.infer_config(state_dict, config)
    except (OSError, ImportError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    which = "SiT's official code" if ref.official else "the statement of SiT's code"
    print(f"comparing SiT-{config_name(config).removeprefix('DiT-')} (input {config.input_size}, "
          f"{config.num_classes} classes) with {which} at {args.reference_sit}")
    if args.train:
        rows = run_sit_training_comparison(ref, config, steps=args.train, state_dict=state_dict, batch=args.batch,
                                           seed=args.seed, log=print)
    else:
        rows = run_sit_comparison(ref, config, state_dict=state_dict, batch=args.batch, cfg_scale=args.cfg_scale,
                                  seed=args.seed, tol=args.tol, log=print)
    return report(rows)


LIGHTNING_FLAGS = {"qknorm": "use_qknorm", "rmsnorm": "use_rmsnorm", "swiglu": "use_swiglu", "rope": "use_rope",
                   "wo_shift": "wo_shift"}


def lightningdit_main(args) -> int:
    """--reference-lightningdit: the forward, loss and shifted-ODE rows against LightningDiT's code."""
    if args.solvers or args.train:
        print("error: --solvers and --train are DiT/SiT comparisons: drop them with --reference-lightningdit",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")   # its modules are decorated with torch.compile
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from dit_jax.convert import lightningdit_torch, torch_io
    from dit_jax.models.dit import dit_config
    from dit_jax.parity.lightningdit import load_lightningdit_reference, run_lightningdit_comparison

    names = [n for n in args.lightningdit_options.split(",") if n and n != "none"]
    unknown = sorted(set(names) - set(LIGHTNING_FLAGS))
    if unknown:
        print(f"error: --lightningdit-options: unknown {unknown}; choose from {sorted(LIGHTNING_FLAGS)}",
              file=sys.stderr)
        return 2
    try:
        ref = load_lightningdit_reference(args.reference_lightningdit, log=print)
        overrides = {"num_classes": args.num_classes, "learn_sigma": False, **{LIGHTNING_FLAGS[n]: True for n in names}}
        if args.input_size:
            overrides["input_size"] = args.input_size
        config = dit_config(args.model.replace("LightningDiT-", "DiT-"), **overrides)
        state_dict = None
        if args.checkpoint:
            state_dict = torch_io.load_state_dict(args.checkpoint, args.key)
            config = lightningdit_torch.infer_config(state_dict)
    except (OSError, ImportError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = [k for k in LIGHTNING_FLAGS.values() if getattr(config, k)]
    which = "LightningDiT's official code" if ref.official else "the statement of LightningDiT's code"
    print(f"comparing a LightningDiT (depth {config.depth}, hidden {config.hidden_size}, patch {config.patch_size}, "
          f"input {config.input_size}x{config.input_size}x{config.in_channels}, options {options or 'none'}) "
          f"with {which} at {args.reference_lightningdit}")
    rows = run_lightningdit_comparison(ref, config, state_dict=state_dict, batch=args.batch,
                                       cfg_scale=args.cfg_scale, seed=args.seed, tol=args.tol, log=print)
    return report(rows)


def report(rows) -> int:
    """Print the rows; exit code 1 if any is past its tolerance."""
    from dit_jax.parity.common import format_table
    print(format_table(rows))
    failed = [r.name for r in rows if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("all rows within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
