"""Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"), as
EDM2's generate_images.py: a second, weaker model of the same kind (smaller, or trained for less)
guides the main one,

    D = g(x) + w (D_main(x) - g(x))        (EDM2: ref_Dx.lerp(Dx, guidance))

Both see the same x, t and class labels. EDM2 combines the denoised images D; here the combination is
applied to what the network predicts (eps, velocity): for a fixed (x, t) each is an affine function of
D, and weights g + w (m - g) sum to one, so the result is the same. Every predicted channel is guided
(EDM2 has no 3-channel quirk: --cfg-mode applies to classifier-free guidance only); a learned variance
is the main model's. Classifier-free guidance is the same combination with (main, guide) =
(conditional, unconditional) passes of one network (`combine`).

`autoguided_fn` is signature-agnostic: any objective's network function `fn(x, t, ...)` (MeanFlow's
u(z, t, h, y) included) is guided by passing the main and guide functions over the same arguments.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dit_jax.exit_codes import BadInput

# What "the same kind" requires of a guide: the same data (shape, classes) and, for training runs, the
# same objective and noise process; depth, width, patch size, heads and learn_sigma may differ (EDM2
# guides its XXL model with an M or XS one).
SAME_DATA = ("input_size", "in_channels", "num_classes")
SAME_PROCESS = ("objective", "noise_schedule", "diffusion_steps")
SAME_TRANSPORT = ("path", "prediction")


def combine(main: jax.Array, guide: jax.Array, scale, channels: int) -> jax.Array:
    """guide + scale (main - guide) on the first `channels` channels; the main output's other channels."""
    guided = guide[..., :channels] + scale * (main[..., :channels] - guide[..., :channels])
    return jnp.concatenate([guided.astype(main.dtype), main[..., channels:]], axis=-1)


def autoguided_fn(main_fn: Callable, guide_fn: Callable, scale, channels: int,
                  inside: Callable | None = None) -> Callable:
    """fn(*args) = combine(main_fn(*args), guide_fn(*args)); with `inside(*args)` -> (B,) bool, rows
    outside the guidance interval get the main model's output alone (both still run: static shapes)."""
    def fn(*args):
        main = main_fn(*args)
        guided = combine(main, guide_fn(*args), scale, channels)
        if inside is None:
            return guided
        return jnp.where(inside(*args).reshape((-1,) + (1,) * (main.ndim - 1)), guided, main)
    return fn


def guide_problems(main_config, guide_config, main_schedule: dict, guide_schedule: dict | None) -> list[str]:
    """Why the guide cannot guide the main model (empty when it can). Schedules as `load_model` gives
    them; None for converted weights, which are assumed to share the main model's process."""
    problems = [f"{k}: main {getattr(main_config, k)!r}, guide {getattr(guide_config, k)!r}"
                for k in SAME_DATA if getattr(main_config, k) != getattr(guide_config, k)]
    if guide_schedule is not None:
        defaults = dict(objective="ddpm", noise_schedule="linear", diffusion_steps=1000)
        for k in SAME_PROCESS:
            a, b = main_schedule.get(k, defaults[k]), guide_schedule.get(k, defaults[k])
            if a != b:
                problems.append(f"{k}: main {a!r}, guide {b!r}")
        if main_schedule.get("objective") == "sit":
            for k in SAME_TRANSPORT:
                a, b = (s.get("transport", {}).get(k) for s in (main_schedule, guide_schedule))
                if a != b:
                    problems.append(f"transport.{k}: main {a!r}, guide {b!r}")
    return problems


def check_guide(main_config, guide_config, main_schedule: dict, guide_schedule: dict | None, source: str) -> None:
    problems = guide_problems(main_config, guide_config, main_schedule, guide_schedule)
    if problems:
        raise BadInput(f"--guide {source} is not a model of the main model's kind ({'; '.join(problems)}): guide with "
                       "an earlier checkpoint or a smaller model trained on the same data with the same objective")
