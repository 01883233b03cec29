"""Quality of the EMA weights during and after training.

kind 'digits': the demo's digit classifier (class accuracy of guided samples, Frechet distance in
its feature space). kind 'fid': FID of decoded samples against an ADM reference batch's pool
statistics, with the FID Inception (pytorch-fid weights). Both sample the same labels and noise
every time, so the numbers form a curve over training.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np

from dit_jax import storage
from dit_jax.parallel.mesh import make_mesh_from_config
from dit_jax.train.config_base import run_diffusion
from dit_jax.train.metrics_log import MetricsLog

KINDS = ("", "digits", "fid")


def check(config) -> list[str]:
    """Config problems of config.eval (empty when fine)."""
    e = config.eval
    if e.kind not in KINDS:
        return [f"eval.kind must be one of {KINDS}, got {e.kind!r}"]
    problems = []
    if e.kind and e.num_samples < 2:
        problems.append(f"eval.num_samples must be >= 2 for eval.kind={e.kind!r}, got {e.num_samples}")
    if e.kind == "fid" and not (e.reference and e.inception):
        problems.append("eval.kind='fid' needs eval.reference (an ADM reference batch .npz) and eval.inception "
                        "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    if e.kind == "fid" and config.data.latents and not config.data.vae:
        problems.append("eval.kind='fid' on a latent model needs data.vae to decode the samples")
    return problems


def make_sampler(config, model_cfg, mesh, vae_config=None):
    """The evaluation's jitted sampler over the run's mesh, built once per run (`make_batch_sampler`)."""
    from dit_jax.parallel.sharding import batch_sharding
    from dit_jax.sampling.sampler import make_batch_sampler
    e = config.eval
    return make_batch_sampler(model_cfg, run_diffusion(config, e.steps), batch_sharding(mesh), e.cfg_scale,
                              e.cfg_mode, "ddpm", vae_config=vae_config if config.data.latents else None)


def ema_samples(config, model_cfg, ema_params, sampler, vae_params=None,
                stop=lambda: False) -> tuple[np.ndarray, np.ndarray] | None:
    """(samples in [-1, 1] (decoded with the VAE for latent models), labels) on every host: labels cycle
    through the classes and the noise is fixed by the seed, the same at every evaluation. All hosts
    sample together; None when `stop()` (asked between batches, the same answer on every host) says so."""
    from dit_jax.sampling.sampler import fetch
    e = config.eval
    labels = np.arange(e.num_samples) % model_cfg.num_classes
    out = []
    for i in range(0, len(labels), e.batch_size):
        if stop():
            return None
        chunk = labels[i:i + e.batch_size]
        x = sampler(ema_params, chunk, jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), i), vae_params)
        out.append(fetch(x, len(chunk)))
    return np.concatenate(out), labels


def evaluate(config, model_cfg, ema_params, sampler, vae_params=None, stop=lambda: False) -> dict[str, float] | None:
    """{'eval/...': value} for config.eval.kind, the same on every host; None if `stop()` interrupted it."""
    t0 = time.time()
    sampled = ema_samples(config, model_cfg, ema_params, sampler, vae_params, stop)
    if sampled is None:
        return None
    images, labels = sampled
    if config.eval.kind == "digits":
        from dit_jax.evaluate.digits_classifier import load_classifier, score_samples
        scores = score_samples(np.clip(images, -1, 1), labels, load_classifier())
    else:
        from dit_jax.convert.inception_torch import load_fid_inception
        from dit_jax.evaluate import adm_metrics
        from dit_jax.models.inception import extract_features
        from dit_jax.sampling.grids import to_uint8
        ref = adm_metrics.load_reference_batch(config.eval.reference, min_images=0)
        rgb = to_uint8(images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1))
        pool = extract_features(load_fid_inception(config.eval.inception), rgb, outputs=("pool",))["pool"]
        scores = {"fid": adm_metrics.fid(pool, ref.stats), "num_samples": len(images)}
    scores = {f"eval/{k}": float(v) for k, v in scores.items()}
    scores["eval/seconds"] = time.time() - t0
    return scores


def describe(config, scores: dict) -> str:
    e = config.eval
    head = f"EMA quality ({e.num_samples} samples, {e.steps} steps, cfg {e.cfg_scale}, {scores['eval/seconds']:.0f} s): "
    if e.kind == "digits":
        return head + (f"class accuracy {scores['eval/class_accuracy']:.3f}, "
                       f"Frechet distance {scores['eval/frechet_distance']:.2f}")
    return head + f"FID {scores['eval/fid']:.2f}"


def final_evaluation(config, model_cfg, ema_params, workdir: str, log: MetricsLog, sampler=None, vae_params=None,
                     stop=lambda: False) -> dict | None:
    """The quality scores of the final EMA weights, printed and written to WORKDIR/eval_scores.json
    (and demo_scores.json for the demo's digits scores); None if `stop()` interrupted it."""
    sampler = sampler or make_sampler(config, model_cfg, make_mesh_from_config(config.mesh))
    scores = evaluate(config, model_cfg, ema_params, sampler, vae_params, stop)
    if scores is None:
        return None
    log.print(describe(config, scores))
    if jax.process_index() == 0:
        names = ["eval_scores.json"] + (["demo_scores.json"] if config.eval.kind == "digits" else [])
        for name in names:
            storage.write_bytes_atomic(storage.join(workdir, name), json.dumps(scores, indent=2).encode())
    return scores
