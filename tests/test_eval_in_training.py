"""Quality curves during training: the demo's digit scores and FID against a reference batch,
computed on EMA samples every N steps and logged beside the loss."""

import dataclasses
import json
import os

import numpy as np
import pytest

from dit_jax.train.loop import train_and_evaluate
from helpers import tiny_config

pytestmark = pytest.mark.slow  # trains, starts processes or compiles whole programs (docs/testing.md)


def logged(workdir, key):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row[key] for row in map(json.loads, f) if key in row}


def test_digits_scores_every_n_steps(tmp_path):
    c = tiny_config(**{"evals.digits.kind": "digits", "evals.digits.every": 2, "evals.digits.num_samples": 20, "evals.digits.steps": "5",
                       "total_steps": 4})
    result = train_and_evaluate(c, str(tmp_path))
    curve = logged(str(tmp_path), "eval/digits/frechet_distance")
    assert sorted(curve) == [2]  # periodic; the final one goes to eval_scores.json
    assert np.isfinite(curve[2]) and np.isfinite(result["eval/digits/frechet_distance"])
    with open(tmp_path / "eval_scores.json") as f:
        assert json.load(f)["eval/digits/num_samples"] == 20


# 6 samples against 6 reference images: the covariance product is singular, and our FID says so (the value
# is checked against the exact few-sample distance below).
@pytest.mark.filterwarnings("ignore:frechet distance. singular product:UserWarning")
def test_fid_against_a_reference_batch_during_training(tmp_path):
    from dit_jax.convert.inception_torch import save_npz
    from dit_jax.metrics import adm_metrics
    from dit_jax.models.inception import extract_features, init_variables

    variables = init_variables(0)
    save_npz(variables, str(tmp_path / "inception.npz"))
    ref_images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    feats = extract_features(variables, ref_images)
    adm_metrics.write_reference_batch(str(tmp_path / "ref.npz"), ref_images, feats["pool"], feats["spatial"],
                                      n_images=6)
    # The final evaluation only: the schedule of periodic ones is the same for every kind and is checked
    # above and in test_two_evaluators_run_in_one_run; a periodic FID here cost two more 2048x2048
    # matrix square roots (about 20 s on the 2-core machine) and checked nothing that is FID's own.
    c = tiny_config(**{"evals.fid.kind": "fid", "evals.fid.every": 0, "evals.fid.num_samples": 6, "evals.fid.steps": "3",
                       "evals.fid.reference": str(tmp_path / "ref.npz"),
                       "evals.fid.inception": str(tmp_path / "inception.npz"),
                       "total_steps": 2})
    result = train_and_evaluate(c, str(tmp_path / "run"))
    assert logged(str(tmp_path / "run"), "eval/fid/fid") == {} and result["eval/fid/fid"] > 0
    with open(tmp_path / "run" / "eval_scores.json") as f:
        assert json.load(f)["eval/fid/fid"] == result["eval/fid/fid"]
    # The final FID recomputed from the same samples (the final EMA weights, the evaluation's labels
    # and noise), their Inception features and the statistics written in the reference batch file,
    # by the exact few-sample formula (tests/test_adm_metrics.py).
    from dit_jax.sampling.grids import to_uint8
    from dit_jax.train import evaluators as evaluation
    from dit_jax.train.checkpoint import load_ema
    from dit_jax.run import make_run
    from helpers import FEW_SAMPLE_ABS, few_sample_frechet
    run = make_run(c)
    [ev] = evaluation.make_evaluators(run)
    ema, _, step = load_ema(str(tmp_path / "run"))
    assert step == 2
    other_noise = c.copy_and_resolve_references()
    other_noise.seed += 1
    recomputed = {}
    for name, which in (("same", run), ("other noise", dataclasses.replace(run, config=other_noise))):
        images, _ = evaluation.ema_samples(which, ev, ema)
        pool = extract_features(variables, to_uint8(np.repeat(images, 3, axis=-1)), outputs=("pool",))["pool"]
        with np.load(tmp_path / "ref.npz") as ref:
            recomputed[name] = few_sample_frechet(pool, ref["mu"], ref["sigma"])
    print("FID during training vs recomputed:", result["eval/fid/fid"], recomputed)
    assert result["eval/fid/fid"] == pytest.approx(recomputed["same"], abs=FEW_SAMPLE_ABS)
    # Negative control: the same weights' samples from other noise score another FID.
    assert abs(recomputed["other noise"] - recomputed["same"]) > 10 * FEW_SAMPLE_ABS


def test_fid_eval_needs_its_files(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="needs evals.fid.reference"):
        train_and_evaluate(tiny_config(**{"evals.fid.kind": "fid", "evals.fid.num_samples": 4}), str(tmp_path))


def test_evaluation_samples_with_the_runs_noise_schedule():
    """A run with another schedule (cosine, 100 steps) is evaluated with that schedule, as its grids are."""
    import jax

    import dataclasses

    from dit_jax.diffusion.gaussian import create_diffusion
    from dit_jax.models.dit import init_params
    from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler
    from dit_jax.train import evaluators as evaluation
    from dit_jax.run import make_run

    c = tiny_config(**{"evals.digits.kind": "digits", "evals.digits.num_samples": 4, "evals.digits.batch_size": 4,
                       "evals.digits.steps": "3", "diffusion.noise_schedule": "squaredcos_cap_v2",
                       "diffusion.num_timesteps": 100})
    run = make_run(c)
    params = init_params(run.model, jax.random.key(1))
    [ev] = evaluation.make_evaluators(run)
    got, _ = evaluation.ema_samples(run, ev, params)
    # Expected: the same sampler factory given the cosine diffusion explicitly; and a negative control:
    # the default linear 1000-step schedule gives other samples.
    settings = SamplerSettings.from_config(c.evals.digits)
    outputs = {}
    for name, objective in (("cosine", create_diffusion("", noise_schedule="squaredcos_cap_v2",
                                                        learn_sigma=run.model.learn_sigma, diffusion_steps=100)),
                            ("linear", create_diffusion("", learn_sigma=run.model.learn_sigma))):
        other = dataclasses.replace(run, objective=objective)
        outputs[name], _ = evaluation.ema_samples(run, dataclasses.replace(ev, sample=build_sampler(other, settings)),
                                                  params)
    np.testing.assert_array_equal(got, outputs["cosine"])
    assert np.abs(got - outputs["linear"]).max() > 1e-2


def test_two_evaluators_run_in_one_run(tmp_path):
    """config.evals: the demo's digits score and a second digits evaluator with another sampler and
    schedule, in one run; each logs its own curve under its own name."""
    c = tiny_config(**{"evals.digits.kind": "digits", "evals.digits.every": 2, "evals.digits.num_samples": 10,
                       "evals.digits.batch_size": 10, "evals.digits.steps": "4", "total_steps": 4})
    c.evals["fast"] = c.evals.digits.copy_and_resolve_references()
    c.evals.fast.update(sampler="dpm++2m", steps="3", every=4)
    result = train_and_evaluate(c, str(tmp_path))
    assert sorted(logged(str(tmp_path), "eval/digits/frechet_distance")) == [2]
    assert logged(str(tmp_path), "eval/fast/frechet_distance") == {}  # every=4 is the last step: the final one
    for name in ("digits", "fast"):
        assert np.isfinite(result[f"eval/{name}/frechet_distance"])
    assert result["eval/fast/frechet_distance"] != result["eval/digits/frechet_distance"]  # another sampler
    with open(tmp_path / "eval_scores.json") as f:
        assert {"eval/digits/num_samples", "eval/fast/num_samples"} <= set(json.load(f))
