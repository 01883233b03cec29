"""Quality of the EMA weights during and after training: the evaluators of `config.evals`.

Each entry of config.evals is one evaluator with its own kind, schedule, sample count and sampler
(as big_vision's `evals`), so the digits score and FID, or two digits evaluators with different
samplers, run in one run. Every evaluation samples the same labels and noise, so the numbers form a
curve over training. Scores are named `eval/NAME/METRIC`.

A kind is a class behind one interface, registered by name (`register_evaluator`): what its config
section must hold (`check`), the scores of a batch of samples (`score`) and the line that reports
them (`describe`). Kinds here: 'digits' (the demo's digit classifier: class accuracy of guided
samples, Frechet distance in its feature space) and 'fid' (FID of decoded samples against an ADM
reference batch's pool statistics, with the FID Inception of pytorch-fid's weights); '' switches an
entry off. A new metric adds a class and `register_evaluator("fd_dinov2", FDDinov2)`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from dit_jax import storage
from dit_jax.run import Run
from dit_jax.sampling.run_sampler import SamplerSettings, build_sampler, fetch
from dit_jax.train.metrics_log import MetricsLog



class EvaluatorKind:
    """One kind of evaluator. Subclasses set `name`, and override `score` and `describe` (and `check`
    for the settings and files their section needs)."""
    name = ""
    also_writes: tuple[str, ...] = ()   # files written beside eval_scores.json at the end of a run

    def check(self, where: str, section, config, files: bool) -> list[str]:
        """Problems of the section `where` (e.g. 'evals.fid') beyond the ones every kind has."""
        return []

    def score(self, images: np.ndarray, labels: np.ndarray, section) -> dict[str, float]:
        """{metric: value} of samples in [-1, 1] (decoded for latent models) drawn for `labels`."""
        raise NotImplementedError

    def describe(self, scores: dict[str, float]) -> str:
        """The metrics of `score`'s result in a few words."""
        raise NotImplementedError


_KINDS: dict[str, EvaluatorKind] = {}


def register_evaluator(name: str, kind: type[EvaluatorKind]) -> None:
    """Make `--config.evals.X.kind=name` evaluate with `kind` (a subclass of EvaluatorKind)."""
    if name in _KINDS and type(_KINDS[name]) is not kind:
        raise ValueError(f"an evaluator kind {name!r} is registered already ({type(_KINDS[name]).__name__})")
    _KINDS[name] = kind()


def kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def evaluator_kind(name: str) -> EvaluatorKind:
    return _KINDS[name]


class DigitsEvaluator(EvaluatorKind):
    """The demo's digit classifier: class accuracy of the samples, Frechet distance in its features."""
    name = "digits"
    also_writes = ("demo_scores.json",)

    def score(self, images, labels, section):
        from dit_jax.metrics.digits_classifier import load_classifier, score_samples
        return score_samples(np.clip(images, -1, 1), labels, load_classifier())

    def describe(self, scores):
        return f"class accuracy {scores['class_accuracy']:.3f}, Frechet distance {scores['frechet_distance']:.2f}"


class FIDEvaluator(EvaluatorKind):
    """FID against an ADM reference batch's pool statistics, with pytorch-fid's Inception weights."""
    name = "fid"

    def check(self, where, section, config, files):
        problems = []
        if not (section.reference and section.inception):
            problems.append(f"{where}: kind 'fid' needs {where}.reference (an ADM reference batch .npz) and "
                            f"{where}.inception (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
        if config.data.latents and not config.data.vae:
            problems.append(f"{where}: kind 'fid' on a latent model needs data.vae to decode the samples")
        if files:
            for key in ("reference", "inception"):
                if section[key] and not storage.resolve(section[key]).is_file():
                    problems.append(f"{where}.{key}: no file at {section[key]!r}")
        return problems

    def score(self, images, labels, section):
        from dit_jax.convert.inception_torch import load_fid_inception
        from dit_jax.metrics import adm_metrics
        from dit_jax.models.inception import extract_features
        from dit_jax.sampling.grids import to_uint8
        ref = adm_metrics.load_reference_batch(section.reference, min_images=0)
        rgb = to_uint8(images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1))
        pool = extract_features(load_fid_inception(section.inception), rgb, outputs=("pool",))["pool"]
        return {"fid": adm_metrics.fid(pool, ref.stats), "num_samples": len(images)}

    def describe(self, scores):
        return f"FID {scores['fid']:.2f}"


class FDDinov2Kind(EvaluatorKind):
    """EDM2's FD_DINOv2 (metrics/fd_dinov2.py): the DINOv2 ViT-L/14 detector and its reference statistics
    are loaded at the first score of a section and kept for its later ones."""
    name = "fd_dinov2"

    def __init__(self):
        self._scorers = {}

    def check(self, where, section, config, files):
        from dit_jax.metrics.fd_dinov2 import FDDinov2Evaluator
        problems = FDDinov2Evaluator.check(section, where, files)
        if config.data.latents and not config.data.vae:
            problems.append(f"{where}: kind 'fd_dinov2' on a latent model needs data.vae to decode the samples")
        return problems

    def score(self, images, labels, section):
        from dit_jax.metrics.fd_dinov2 import FDDinov2Evaluator
        key = (section.reference, section.dinov2, section.dinov2_resize, section.batch_size)
        if key not in self._scorers:
            self._scorers[key] = FDDinov2Evaluator(section)
        return self._scorers[key].score(images, labels)

    def describe(self, scores):
        return f"FD_DINOv2 {scores['fd_dinov2']:.2f}"


register_evaluator("digits", DigitsEvaluator)
register_evaluator("fid", FIDEvaluator)
register_evaluator("fd_dinov2", FDDinov2Kind)


def itstime(step: int, every: int, total: int, *, last: bool = False) -> bool:
    """Whether a periodic task runs after `step`: every `every` steps (0: never periodically), and at the
    last step only when `last` (otherwise the final step is left to the end-of-run task)."""
    if step == total:
        return last
    return bool(every) and step % every == 0


def active(config) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, section) of the evaluators switched on, in the config's order."""
    return [(name, e) for name, e in config.evals.items() if e.kind]


def check(config, files: bool = True) -> list[str]:
    """Config problems of config.evals (empty when fine); `files`: also that the files they name exist."""
    problems = []
    for name, e in config.evals.items():
        where = f"evals.{name}"
        if e.kind not in ("",) + kinds():
            problems.append(f"{where}.kind must be one of {kinds()} (or '' for off), got {e.kind!r}")
            continue
        if not e.kind:
            continue
        if e.num_samples < 2:
            problems.append(f"{where}.num_samples must be >= 2, got {e.num_samples}")
        if not isinstance(e.every, int) or e.every < 0:
            problems.append(f"{where}.every must be an integer >= 0 (0: only at the end), got {e.every!r}")
        if not isinstance(e.batch_size, int) or e.batch_size < 1:
            problems.append(f"{where}.batch_size must be an integer >= 1, got {e.batch_size!r}")
        problems += evaluator_kind(e.kind).check(where, e, config, files)
    return problems


@dataclasses.dataclass(frozen=True)
class Evaluator:
    name: str
    section: ml_collections.ConfigDict
    sample: Callable   # build_sampler's fn(params, labels, key, vae_params)

    @property
    def settings(self) -> SamplerSettings:
        return SamplerSettings.from_config(self.section)

    @property
    def kind(self) -> EvaluatorKind:
        return evaluator_kind(self.section.kind)

    def describe(self) -> str:
        return f"{self.name} ({self.section.kind}, {self.section.num_samples} samples, {self.settings.describe()})"


def make_evaluators(run: Run) -> list[Evaluator]:
    """The run's evaluators, each with its jitted sampler over the run's mesh, built once per run."""
    return [Evaluator(name, e, build_sampler(run, SamplerSettings.from_config(e, run.config.transport)))
            for name, e in active(run.config)]


def ema_samples(run, evaluator: Evaluator, ema_params, vae_params=None, stop=lambda batch: False,
                progress=lambda done, total: None) -> tuple[np.ndarray, np.ndarray] | None:
    """(samples in [-1, 1] (decoded with the VAE for latent models), labels) on every host: labels cycle
    through the classes and the noise is fixed by the seed, the same at every evaluation. All hosts
    sample together; None when `stop(batch_index)` (asked before each batch, by every host) says so."""
    e = evaluator.section
    labels = np.arange(e.num_samples) % run.model.num_classes
    out = []
    for i in range(0, len(labels), e.batch_size):
        if stop(i // e.batch_size):
            return None
        chunk = labels[i:i + e.batch_size]
        x = evaluator.sample(ema_params, chunk, jax.random.fold_in(jax.random.PRNGKey(run.config.seed + 2), i),
                             vae_params)
        out.append(fetch(x, len(chunk)))
        progress(i + len(chunk), len(labels))
    return np.concatenate(out), labels


def evaluate(run, evaluator: Evaluator, ema_params, vae_params=None, stop=lambda batch: False,
             progress=lambda done, total: None) -> dict[str, float] | None:
    """{'eval/NAME/...': value}, the same on every host; None if `stop(batch_index)` interrupted it."""
    t0 = time.time()
    sampled = ema_samples(run, evaluator, ema_params, vae_params, stop, progress)
    if sampled is None:
        return None
    images, labels = sampled
    bad = int(np.sum(~np.isfinite(images.reshape(len(images), -1)).all(axis=1)))
    # NaN/Inf samples make no image: reported as such, never scored as if they were images.
    scores = {NONFINITE: bad} if bad else evaluator.kind.score(images, labels, evaluator.section)
    scores = {f"eval/{evaluator.name}/{k}": float(v) for k, v in scores.items()}
    scores[f"eval/{evaluator.name}/seconds"] = time.time() - t0
    return scores


def describe(evaluator: Evaluator, scores: dict) -> str:
    p = f"eval/{evaluator.name}/"
    mine = {k[len(p):]: v for k, v in scores.items() if k.startswith(p)}
    head = f"EMA quality, {evaluator.describe()}, {mine['seconds']:.0f} s: "
    if NONFINITE in mine:
        return (head + f"not scored: {mine[NONFINITE]:.0f} samples hold NaN/Inf values (the EMA weights or the "
                "sampler settings, e.g. cfg_scale, cannot make images)")
    return head + evaluator.kind.describe(mine)


NONFINITE = "nonfinite_samples"  # the one score of an evaluation whose samples hold NaN/Inf values


def final_evaluation(run, evaluators: list[Evaluator], ema_params, workdir: str, log: MetricsLog, vae_params=None,
                     stops=lambda evaluator: (lambda batch: False), step: int | None = None) -> dict | None:
    """The scores of the final EMA weights by every evaluator, announced, printed and written to
    WORKDIR/eval_scores.json (and demo_scores.json when a digits evaluator ran); None if `stop()`
    interrupted it. stops(evaluator) gives that evaluator's stop(batch_index). With `step` (the run's
    last), the scores also record it and each evaluator's description, so that a rerun of the
    finished run can tell they are its final scores (train/final_scores.py)."""
    merged = {} if step is None else {"step": step, "evaluators": {ev.name: ev.describe() for ev in evaluators}}
    for ev in evaluators:
        log.print(f"final evaluation: {ev.describe()} ...")
        scores = evaluate(run, ev, ema_params, vae_params, stops(ev), progress=progress_lines(log, ev))
        if scores is None:
            return None
        log.print(describe(ev, scores))
        merged.update(scores)
    if jax.process_index() == 0 and evaluators:
        names = ["eval_scores.json"] + sorted({name for ev in evaluators for name in ev.kind.also_writes})
        for name in names:
            storage.write_bytes_atomic(storage.join(workdir, name), json.dumps(merged, indent=2).encode())
    return merged


def progress_lines(log: MetricsLog, ev: Evaluator):
    """A line per quarter of the samples (`  NAME: done/total samples`), for the periodic and the final
    evaluations: a long evaluation is not silent."""
    marks = set()

    def report(done: int, total: int) -> None:
        quarter = 4 * done // total
        if quarter not in marks and quarter > 0:
            marks.add(quarter)
            log.print(f"  {ev.name}: {done}/{total} samples")
    return report
