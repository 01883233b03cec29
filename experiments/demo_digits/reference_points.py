#!/usr/bin/env python
"""The reference rows of the demo's score table: the digit classifier's held-out accuracy, the
scores of 500 real digits, and those of an untrained demo model sampled and scored exactly as the
run's final evaluation does (configs/demo.py's `digits` evaluator, 200 samples).

    python experiments/demo_digits/reference_points.py
"""

import numpy as np


def main() -> None:
    from dit_jax import platforms
    platforms.choose()  # CPU alone where there is no accelerator (no libtpu probing)
    import jax

    from dit_jax.configs.files import load_config, packaged_config
    from dit_jax.metrics.digits_classifier import load_classifier, real_digits, score_samples
    from dit_jax.train import evaluators as evaluation
    from dit_jax.train.programs import build_train_step
    from dit_jax.run import make_run

    classifier = load_classifier()
    print(f"classifier held-out accuracy: {classifier.heldout_accuracy:.3f}")
    images, labels = real_digits()
    pick = np.random.default_rng(0).choice(len(labels), 500, replace=False)
    real = score_samples(images[pick], labels[pick], classifier)
    print(f"500 real digits: class accuracy {real['class_accuracy']:.3f}, Frechet distance "
          f"{real['frechet_distance']:.2f}")
    config = load_config(packaged_config("demo.py"))
    config.evals.digits.num_samples = 200
    run = make_run(config)
    state = build_train_step(run).init(None)  # the run's own initialisation, untrained
    digits = next(e for e in evaluation.make_evaluators(run) if e.name == "digits")
    scores = evaluation.evaluate(run, digits, state.ema_params)
    print(f"untrained model, {digits.describe()}: class accuracy {scores['eval/digits/class_accuracy']:.3f}, "
          f"Frechet distance {scores['eval/digits/frechet_distance']:.1f}")
    print(f"(jax {jax.__version__}, {jax.devices()[0].platform})")


if __name__ == "__main__":
    main()
