"""What a MeanFlow run's config must hold, said field by field (train/validation.py asks)."""

from __future__ import annotations

from dit_jax.meanflow.objective import from_config


def config_problems(config) -> list[str]:
    """The model MeanFlow needs (the second time input, no learned sigma, a null class) and config.meanflow."""
    problems = []
    try:
        from_config(config.meanflow)
    except (ValueError, TypeError) as e:
        problems.append(f"meanflow: {e}")
    m = config.model
    if not m.get("second_time_input", False):
        problems.append("objective 'meanflow' needs the network u(z, t, h, y): set --config.model.second_time_input=True")
    if m.learn_sigma:
        problems.append("objective 'meanflow' regresses a velocity, not a learned variance: set "
                        "--config.model.learn_sigma=False")
    if m.get("attention", "xla") != "xla":
        problems.append(f"objective 'meanflow' differentiates the network forward (jax.jvp), which attention="
                        f"{m.attention!r} (a custom_vjp kernel) does not support: set --config.model.attention=xla")
    if not m.class_dropout_prob > 0:
        problems.append("objective 'meanflow' needs the null class row (guidance, class dropout): set "
                        "--config.model.class_dropout_prob > 0 (MeanFlow drops classes itself, with "
                        "meanflow.class_dropout_prob)")
    return problems
