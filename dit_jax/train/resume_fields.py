"""What each config field means to a resumed run: the one table a resume is checked against.

MEANING: the field changes what the checkpoint's weights are, or what they are trained towards (the
  model's shape and parameter layout, the objective and its schedule or path, the shape of the data).
  A resume with another value would go on training the same weights towards something else (or
  would not restore at all): refused, naming the field, both values and what to do.
DATA: the field changes which records a step reads, in which order or how augmented (the data
  position is the step): refused unless --config.accept_data_change=True (the seed: always).
FREE: how the run is executed, logged, saved, evaluated or sampled: may change on any resume.

Every leaf of base_config() and of each packaged config must be classified here
(tests/test_resume_fields.py fails on any other), so a new field is classified when it is added.
At run time a field missing from the table counts as MEANING: a refusal that names it is the safe side.
"""

from __future__ import annotations

from typing import Any, NamedTuple

MEANING, DATA, FREE = "changes meaning", "changes data stream", "free"

# Exact field names, then "section.*" for whole sections (a config file may add entries to them).
FIELDS: dict[str, str] = {
    "seed": DATA,  # data order and the noise of every step
    # The network: its parameters' shapes and meaning (DiTConfig.architecture), and their layout
    # in the checkpoint (param_dtype; scan_blocks stacks the blocks into one tree leaf per weight).
    **{f"model.{k}": MEANING for k in ("input_size", "patch_size", "in_channels", "hidden_size", "depth",
                                       "num_heads", "mlp_ratio", "class_dropout_prob", "num_classes",
                                       "learn_sigma", "param_dtype", "scan_blocks")},
    # LightningDiT's block options (docs/lightningdit.md): other parameters, or the same ones used otherwise.
    **{f"model.{k}": MEANING for k in ("use_qknorm", "use_rmsnorm", "use_swiglu", "use_rope", "wo_shift")},
    "model.second_time_input": MEANING,  # MeanFlow's h embedder
    # How it is computed, not what it computes (a label, precision of the matmuls, kernels, remat).
    **{f"model.{k}": FREE for k in ("name", "dtype", "attention", "remat")},
    "objective": MEANING,
    "diffusion.num_timesteps": MEANING,
    "diffusion.noise_schedule": MEANING,
    # SiT's training objective; the rest of config.transport are its samplers' options.
    **{f"transport.{k}": MEANING for k in ("path", "prediction", "loss_weight", "train_eps")},
    **{f"transport.{k}": FREE for k in ("sample_eps", "atol", "rtol", "diffusion_form", "diffusion_norm",
                                        "last_step", "last_step_size", "timestep_shift")},
    # LightningDiT's objective options: the time distribution and an extra loss term.
    **{f"transport.{k}": MEANING for k in ("use_lognorm", "use_cosine_loss")},
    # REPA (docs/repa.md): the encoders, where the projectors read, and the loss they train. Only where the
    # encoders' weights are read from may change (the encoder names fix which weights they are).
    **{f"repa.{k}": MEANING for k in ("encoder", "encoder_depth", "proj_coeff", "projector_dim", "path",
                                      "prediction", "weighting")},
    "repa.weights": FREE,
    # MeanFlow (docs/meanflow.md): its time draws, loss weight and training-time guidance are trained into
    # the weights (a 1-NFE model samples what it was trained with).
    "meanflow.*": MEANING,
    # Post-hoc EMA (docs/evaluation_2025.md): the tracked profiles are part of the train state; when
    # snapshots are written may change.
    "phema.stds": MEANING,
    "phema.snapshot_every": FREE,
    # The data's shape and latent space are part of what the model learned.
    **{f"data.{k}": MEANING for k in ("image_size", "channels", "num_classes", "latent_scale")},
    **{f"data.{k}": DATA for k in ("name", "split", "random_flip", "latents")},
    # Where the same data and VAE are read from, and how fast.
    **{f"data.{k}": FREE for k in ("data_dir", "worker_count", "worker_buffer_size", "prefetch_to_device", "vae")},
    "batch_size": DATA,
    "optim.*": FREE,  # the optimizer state has the same structure whatever these are (train/state.py)
    "accept_data_change": FREE,
    "start_over": FREE,
    "total_steps": FREE,
    "ema_decay": FREE,
    "mesh.*": FREE,
    "log_every": FREE,
    "checkpoint_every": FREE,
    "checkpoint_every_minutes": FREE,
    "keep_checkpoints": FREE,
    "async_checkpointing": FREE,
    "sample.*": FREE,
    "evals.*": FREE,
    "init_weights": FREE,  # read only by a run's first start
    "peak_tflops_per_device": FREE,
    "compilation_cache_dir": FREE,
    "profile.*": FREE,
}


def classify(key: str) -> str | None:
    """MEANING, DATA or FREE for a dotted field name; None for a field the table does not know."""
    if key in FIELDS:
        return FIELDS[key]
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        kind = FIELDS.get(".".join(parts[:n]) + ".*")
        if kind is not None:
            return kind
    return None


def leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted field name: value} of every leaf of a config (a ConfigDict or its JSON dict)."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Change(NamedTuple):
    field: str
    kind: str
    stored: Any
    current: Any


def changes(stored: dict, current: dict) -> list[Change]:
    """Each field whose value differs between a checkpoint's config and this run's (both as JSON dicts),
    with its class (an unclassified field counts as MEANING). A field the checkpoint's config lacks (it
    was written before the field existed) held the field's default then: a checkpoint from before
    LightningDiT's options was trained with them off. A field only the checkpoint has is not compared."""
    from dit_jax.configs.base import base_config
    defaults = leaves(base_config().to_dict())
    a, b = leaves(stored), leaves(current)
    a = {**{k: defaults[k] for k in b.keys() - a.keys() if k in defaults}, **a}
    out = []
    for key in sorted(a.keys() & b.keys()):
        if _normal(a[key]) != _normal(b[key]):
            out.append(Change(key, classify(key) or MEANING, a[key], b[key]))
    return out


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


def as_flag(change: Change) -> str:
    """The override that sets a field back to the checkpoint's value."""
    value = change.stored
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return f"--config.{change.field}={text}"
