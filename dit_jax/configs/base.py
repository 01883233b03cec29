"""Every field a training config has, with the paper's values as defaults.

Config files in configs/ start from `base_config()` and change what differs; ml_collections then
type-checks command-line overrides (`--config.batch_size=64`) against these fields.
"""

from __future__ import annotations

import ml_collections

from dit_jax.models.dit import DiTConfig, dit_config


def model_fields(name: str, **overrides) -> ml_collections.ConfigDict:
    """config.model for a named DiT ('XL/2'), all architecture fields spelled out."""
    cfg = dit_config(name, **overrides)
    return ml_collections.ConfigDict({"name": f"DiT-{name.replace('DiT-', '')}", **cfg.to_dict()})


def to_dit_config(model: ml_collections.ConfigDict) -> DiTConfig:
    fields = dict(model)
    fields.pop("name", None)
    return DiTConfig.from_dict(fields)


def evaluator_fields(kind: str = "", **overrides) -> ml_collections.ConfigDict:
    """One evaluator's section of config.evals. every: steps between evaluations (0: only at the end)."""
    fields = dict(kind=kind, every=0, num_samples=0, batch_size=100, sampler="", steps="250", cfg_scale=1.5,
                  cfg_mode="reference", cfg_interval=(0.0, 1.0), spacing="", reference="", inception="",
                  dinov2="", dinov2_resize="torch")  # fd_dinov2: dinov2_vitl14_pretrain.pth, EDM2's resize_mode
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = model_fields("XL/2")
    _objective_fields(c)
    _data_and_optimizer_fields(c)
    _schedule_fields(c)
    return c


def _objective_fields(c: ml_collections.ConfigDict) -> None:
    """What the model is trained to do: the objective and its sections."""
    # The objective: "ddpm" (the paper's Gaussian diffusion, config.diffusion), "meanflow" (config.meanflow) or
    # "sit" (SiT's stochastic interpolants, config.transport: path Linear/GVP/VP, prediction velocity/score/noise,
    # loss weight ""/velocity/likelihood, eps -1 for SiT's default; the rest are the SiT samplers' options).
    c.objective = "ddpm"
    c.diffusion = ml_collections.ConfigDict(dict(num_timesteps=1000, noise_schedule="linear"))
    c.transport = ml_collections.ConfigDict(dict(
        path="Linear", prediction="velocity", loss_weight="", train_eps=-1.0, sample_eps=-1.0,
        atol=1e-6, rtol=1e-3, diffusion_form="sigma", diffusion_norm=1.0, last_step="Mean", last_step_size=0.04,
        # LightningDiT's options (docs/lightningdit.md): use_lognorm draws training t logit-normal; use_cosine_loss
        # adds 1 - cos(out, u_t) along channels (velocity prediction only); both change the objective.
        # timestep_shift s > 0 maps the euler/heun ODE grid t -> s t / (1 + (s - 1) t) (sampling only).
        use_lognorm=False, use_cosine_loss=False, timestep_shift=0.0))
    # MeanFlow (objective "meanflow", dit_jax/meanflow; the official default.py's values): the (t, r) sampler
    # (time_dist logit_normal/uniform, p_mean/p_std), the data_proportion of rows with r = t, training-time
    # guidance (guidance cfg/none, omega, kappa, only for t in [t_start, t_end]), class_dropout_prob (MeanFlow
    # drops the first rows itself; model.class_dropout_prob > 0 only gives the null row), the adaptive loss
    # weight (norm_p, norm_eps). The model needs model.second_time_input=True and learn_sigma=False.
    c.meanflow = ml_collections.ConfigDict(dict(
        time_dist="logit_normal", p_mean=-0.4, p_std=1.0, data_proportion=0.75, guidance="cfg", omega=1.0,
        kappa=0.5, t_start=0.0, t_end=1.0, class_dropout_prob=0.1, norm_p=1.0, norm_eps=0.01))

    # REPA (representation alignment; train/repa.py): encoder "" is off; one or more frozen encoders by
    # name, comma-separated (dinov2-vit-s/b/l/g[-reg], digits-mlp), with their official weights in `weights`
    # (comma-separated, one per encoder; none for digits-mlp). With an encoder the denoising term is REPA's
    # SILoss (t = 0 is data; path linear/cosine, prediction v, weighting uniform/lognormal) instead of
    # config.objective's, plus proj_coeff x the negative cosine between each encoder's features and an MLP
    # projection (hidden -> projector_dim -> projector_dim -> z_dim) of the tokens after block encoder_depth.
    c.repa = ml_collections.ConfigDict(dict(encoder="", weights="", encoder_depth=8, proj_coeff=0.5,
                                            projector_dim=2048, path="linear", prediction="v", weighting="uniform"))


def _data_and_optimizer_fields(c: ml_collections.ConfigDict) -> None:
    """The data stream, the optimizer, the run's length and the mesh."""
    c.data = ml_collections.ConfigDict(dict(
        name="imagenet2012", data_dir="", split="train", image_size=256, channels=3, num_classes=1000,
        random_flip=True, worker_count=4, worker_buffer_size=2,
        prefetch_to_device=2,  # batches sent to the devices ahead of the step that needs them
        # "" trains on pixels; "encode": images encoded by the VAE inside the step (the reference's
        # way, slowest); "dataset": a latent dataset from `dit-jax extract-latents` (fast).
        latents="", vae="", latent_scale=0.18215))  # vae: weights dir from `dit-jax convert --from-diffusers-vae`

    # AdamW, constant lr 1e-4, no weight decay, default betas, no warmup, no clipping (the paper).
    c.optim = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                             warmup_steps=0, grad_clip=0.0))
    c.batch_size = 256            # global, over all devices and hosts
    # A resume refuses a change of the data stream (batch_size, data.name/split/random_flip/latents:
    # train/resume_fields.py, which classifies every field), which would skip or repeat records; True accepts it.
    c.accept_data_change = False
    # A workdir with a run's traces (metrics.jsonl, TensorBoard, ...) but no checkpoint is refused
    # (train/lost_run.py); True starts it over at step 1 on purpose, replacing its metrics rows.
    c.start_over = False
    c.total_steps = 400_000
    c.ema_decay = 0.9999
    # Post-hoc EMA (EDM2): power-function EMA profiles tracked beside ema_decay's, one per relative
    # std in `stds` (EDM2 tracks (0.05, 0.1); () off), part of the train state; every `snapshot_every`
    # steps all of them are written to WORKDIR/phema/<step>/, from which `dit-jax phema` reconstructs
    # any other std after training.
    c.phema = ml_collections.ConfigDict(dict(stds=(), snapshot_every=0))

    # Mesh: pure data parallel by default; set mesh.fsdp > 1 to shard params/optimizer/EMA.
    # data/fsdp/tensor are per slice; dcn_data/dcn_fsdp multiply them across slices (multi-slice TPU,
    # or GPU nodes). shard_optimizer: AdamW moments and EMA split over data (ZeRO-1).
    # allow_replicated: keep (and log) parameters that fsdp/tensor do not divide replicated instead of failing.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1,
                                            shard_optimizer=False, allow_replicated=False))



def _schedule_fields(c: ml_collections.ConfigDict) -> None:
    """What happens along the run: logging, checkpoints, sample grids, evaluations, profiling."""
    c.log_every = 100
    c.checkpoint_every = 10_000
    # Also save when this many minutes passed since the last save (whichever comes first; 0: off),
    # so that a preempted slice loses bounded work. Decided on process 0's clock at log steps.
    c.checkpoint_every_minutes = 0.0
    c.keep_checkpoints = 3
    c.async_checkpointing = True

    # EMA sample grids written as PNG every `sample_every` steps (0: never).
    # sampler "": the objective's default (ddpm: ancestral DDPM; sit: Heun's ODE); steps: a respacing
    # ("250", "ddim50") for ddpm/ddim, a step count for the fast solvers and SiT's samplers.
    # cfg_interval: guidance only where the noise level (1 = pure noise) is in [lo, hi]; (0, 1) everywhere.
    # spacing: the fast solvers' timestep spacing (linspace, leading, trailing).
    c.sample = ml_collections.ConfigDict(dict(every=50_000, num=16, steps="250", sampler="", cfg_scale=4.0,
                                              cfg_mode="reference", cfg_interval=(0.0, 1.0), spacing=""))
    # Quality of EMA samples (train/evaluators.py): named evaluators, each with its own kind ("digits": the
    # demo's classifier; "fid": against an ADM reference batch's statistics, with pytorch-fid's Inception
    # weights; "fd_dinov2": EDM2's FD_DINOv2 against a reference batch, with DINOv2 ViT-L/14 weights in
    # .dinov2; "" off), schedule (every N steps, 0: only at the end), sample count and sampler. Switch
    # one on with e.g. --config.evals.fid.kind=fid; a config file may add more entries.
    c.evals = ml_collections.ConfigDict(dict(fid=evaluator_fields(), digits=evaluator_fields(
        steps="100", cfg_scale=2.0, cfg_mode="all", num_samples=500)))
    # Start from converted weights (a `dit-jax convert` output directory) instead of random init.
    c.init_weights = ""
    # MFU: peak dense FLOP/s per device; 0 picks it from the device kind when known.
    c.peak_tflops_per_device = 0.0
    # JAX's persistent compilation cache: a restarted run loads its compiled step instead of
    # compiling it again ('' leaves it off). A gs:// path shares it between the hosts of a pod.
    c.compilation_cache_dir = "~/.cache/dit_jax/jax_cache"
    # XProf/TensorBoard trace of num_steps steps into WORKDIR/profile, from start_step steps after
    # this process started (>= 1 keeps compilation out); hosts: 'all' or process indices '0,1'.
    c.profile = ml_collections.ConfigDict(dict(start_step=5, num_steps=0, hosts="0"))
