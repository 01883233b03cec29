"""configs/meanflow.py and the config check of a MeanFlow run (dit_jax/meanflow/checks.py)."""

from dit_jax.configs.files import config_from_args, packaged_config
from dit_jax.configs.base import base_config
from dit_jax.train.validation import config_problems


def _problems(config):
    return [p for p in config_problems(config, files=False) if "meanflow" in p or "objective" in p]


def test_the_recipes_pass_and_hold_the_official_values():
    for arg, omega, kappa, t_end in (("XL/2", 0.2, 0.92, 0.75), ("B/4", 1.0, 0.5, 1.0), ("demo", 1.0, 0.5, 1.0)):
        c = config_from_args([], packaged_config("meanflow.py") + ":" + arg, "test")
        assert _problems(c) == [], arg
        assert (c.meanflow.omega, c.meanflow.kappa, c.meanflow.t_end) == (omega, kappa, t_end)
        assert c.optim.b2 == 0.95 and c.model.second_time_input and not c.model.learn_sigma
        assert c.sample.sampler == "meanflow" and c.sample.steps == "1" and c.model.attention == "xla"
    c = config_from_args([], packaged_config("meanflow.py") + ":XL/2", "test")
    assert c.total_steps == 240 * 5004 and c.ema_decay == 0.9999


def test_a_meanflow_run_needs_its_network():
    c = base_config()
    c.objective = "meanflow"
    found = " ".join(_problems(c))
    for text in ("second_time_input=True", "learn_sigma=False"):
        assert text in found
    c = config_from_args([], packaged_config("meanflow.py") + ":B/4", "test")
    c.model.attention = "cudnn"
    c.meanflow.time_dist = "normal"
    found = " ".join(_problems(c))
    assert "attention='cudnn'" in found and "time_dist must be one of" in found


def test_the_plain_dit_is_unchanged():
    """second_time_input off: no h_embedder, the same parameters as before the option existed."""
    import jax
    from dit_jax.models.dit import abstract_params, dit_config
    plain = abstract_params(dit_config("S/2", input_size=8, depth=1))
    assert "h_embedder" not in plain
    mf = abstract_params(dit_config("S/2", input_size=8, depth=1, second_time_input=True, learn_sigma=False))
    assert set(mf) - set(plain) == {"h_embedder"}
    assert jax.tree.structure(mf["h_embedder"]) == jax.tree.structure(plain["t_embedder"])
