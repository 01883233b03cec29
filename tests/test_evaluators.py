"""Evaluator kinds: one class per kind behind one interface (check, score, describe), registered by
name; a kind registered from outside is checked, scored and described as the built-in ones are."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.configs.base import base_config, evaluator_fields
from dit_jax.train import evaluators


class MeanPixel(evaluators.EvaluatorKind):
    """A stand-in metric: the mean of the samples."""
    name = "mean_pixel"

    def check(self, where, section, config, files):
        return [] if section.cfg_scale >= 1 else [f"{where}.cfg_scale must be >= 1 for mean_pixel"]

    def score(self, images, labels, section):
        return {"mean": float(np.mean(images)), "num_samples": len(images)}

    def describe(self, scores):
        return f"mean pixel {scores['mean']:.2f}"


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(evaluators, "_KINDS", dict(evaluators._KINDS))  # the registry as it was, after the test
    evaluators.register_evaluator("mean_pixel", MeanPixel)


def _config(**section):
    config = base_config()
    config.evals = {"mine": evaluator_fields(**section)}
    return config


def test_the_built_in_kinds_are_registered():
    assert set(evaluators.kinds()) >= {"digits", "fid", "fd_dinov2"}
    assert isinstance(evaluators.evaluator_kind("fid"), evaluators.FIDEvaluator)


def test_a_kind_is_checked_by_its_class(registered):
    assert evaluators.check(_config(kind="mean_pixel", num_samples=4, cfg_scale=1.5)) == []
    assert evaluators.check(_config(kind="mean_pixel", num_samples=4, cfg_scale=0.5)) == [
        "evals.mine.cfg_scale must be >= 1 for mean_pixel"]
    fid = evaluators.check(_config(kind="fid", num_samples=4), files=False)
    assert len(fid) == 1 and "kind 'fid' needs evals.mine.reference" in fid[0]


def test_an_unknown_kind_names_the_registered_ones(registered):
    [problem] = evaluators.check(_config(kind="no_such_kind", num_samples=4))
    assert "evals.mine.kind must be one of" in problem and "'mean_pixel'" in problem and "'no_such_kind'" in problem
    assert "'fd_dinov2'" in problem  # registered by train/evaluators.py


def test_a_name_registered_twice_with_another_class_is_refused(registered):
    evaluators.register_evaluator("mean_pixel", MeanPixel)  # the same class again: fine
    with pytest.raises(ValueError, match="registered already"):
        evaluators.register_evaluator("mean_pixel", evaluators.DigitsEvaluator)


def test_a_registered_kind_scores_and_describes_samples(registered):
    section = evaluator_fields(kind="mean_pixel", num_samples=6, batch_size=4)
    ev = evaluators.Evaluator("mine", section, sample=lambda params, labels, key, vae: jnp.full((len(labels), 2), 0.5))
    run = types.SimpleNamespace(model=types.SimpleNamespace(num_classes=10), config=types.SimpleNamespace(seed=0))
    scores = evaluators.evaluate(run, ev, ema_params=None)
    assert scores["eval/mine/mean"] == 0.5 and scores["eval/mine/num_samples"] == 6
    assert evaluators.describe(ev, scores).endswith(": mean pixel 0.50")


def test_samples_holding_nan_are_reported_not_scored(registered):
    """NaN/Inf samples make no image: the evaluation says how many, and no metric is computed on them."""
    section = evaluator_fields(kind="mean_pixel", num_samples=6, batch_size=4)

    def sample(params, labels, key, vae):
        return jnp.full((len(labels), 2), 0.5).at[0, 1].set(jnp.nan)  # one NaN sample per batch
    ev = evaluators.Evaluator("mine", section, sample=sample)
    run = types.SimpleNamespace(model=types.SimpleNamespace(num_classes=10), config=types.SimpleNamespace(seed=0))
    scores = evaluators.evaluate(run, ev, ema_params=None)
    assert scores["eval/mine/nonfinite_samples"] == 2 and "eval/mine/mean" not in scores
    assert "not scored: 2 samples hold NaN/Inf values" in evaluators.describe(ev, scores)
