"""Quality curves during training: the demo's digit scores and FID against a reference batch,
computed on EMA samples every N steps and logged beside the loss."""

import json
import os

import numpy as np

from dit_jax.train.loop import train_and_evaluate
from test_train import tiny_config


def logged(workdir, key):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row[key] for row in map(json.loads, f) if key in row}


def test_digits_scores_every_n_steps(tmp_path):
    c = tiny_config(**{"eval.kind": "digits", "eval.every": 2, "eval.num_samples": 20, "eval.steps": "5",
                       "total_steps": 4})
    result = train_and_evaluate(c, str(tmp_path))
    curve = logged(str(tmp_path), "eval/frechet_distance")
    assert sorted(curve) == [2]  # periodic; the final one goes to eval_scores.json
    assert np.isfinite(curve[2]) and np.isfinite(result["eval/frechet_distance"])
    with open(tmp_path / "eval_scores.json") as f:
        assert json.load(f)["eval/num_samples"] == 20


def test_fid_against_a_reference_batch_during_training(tmp_path):
    from dit_jax.convert.inception_torch import save_npz
    from dit_jax.evaluate import adm_metrics
    from dit_jax.models.inception import extract_features, init_variables

    variables = init_variables(0)
    save_npz(variables, str(tmp_path / "inception.npz"))
    ref_images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    feats = extract_features(variables, ref_images)
    adm_metrics.write_reference_batch(str(tmp_path / "ref.npz"), ref_images, feats["pool"], feats["spatial"],
                                      n_images=6)
    c = tiny_config(**{"eval.kind": "fid", "eval.every": 2, "eval.num_samples": 6, "eval.steps": "3",
                       "eval.reference": str(tmp_path / "ref.npz"), "eval.inception": str(tmp_path / "inception.npz"),
                       "total_steps": 4})
    result = train_and_evaluate(c, str(tmp_path / "run"))
    curve = logged(str(tmp_path / "run"), "eval/fid")
    assert sorted(curve) == [2] and curve[2] > 0 and result["eval/fid"] > 0


def test_fid_eval_needs_its_files(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="needs eval.reference"):
        train_and_evaluate(tiny_config(**{"eval.kind": "fid", "eval.num_samples": 4}), str(tmp_path))


def test_evaluation_samples_with_the_runs_noise_schedule():
    """A run with another schedule (cosine, 100 steps) is evaluated with that schedule, as its grids are."""
    import jax

    from dit_jax.diffusion.gaussian import create_diffusion
    from dit_jax.models.dit import init_params
    from dit_jax.parallel.mesh import make_mesh_from_config
    from dit_jax.parallel.sharding import batch_sharding
    from dit_jax.sampling.sampler import make_batch_sampler
    from dit_jax.train import evaluation
    from dit_jax.train.config_base import to_dit_config

    c = tiny_config(**{"eval.kind": "digits", "eval.num_samples": 4, "eval.batch_size": 4, "eval.steps": "3",
                       "diffusion.noise_schedule": "squaredcos_cap_v2", "diffusion.num_timesteps": 100})
    model_cfg, mesh = to_dit_config(c.model), make_mesh_from_config(c.mesh)
    params = init_params(model_cfg, jax.random.key(1))
    got, _ = evaluation.ema_samples(c, model_cfg, params, evaluation.make_sampler(c, model_cfg, mesh))
    cosine = make_batch_sampler(model_cfg, create_diffusion("3", noise_schedule="squaredcos_cap_v2",
                                                            learn_sigma=model_cfg.learn_sigma, diffusion_steps=100),
                                batch_sharding(mesh), c.eval.cfg_scale, c.eval.cfg_mode, "ddpm")
    want, _ = evaluation.ema_samples(c, model_cfg, params, cosine)
    np.testing.assert_array_equal(got, want)
