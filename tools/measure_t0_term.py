#!/usr/bin/env python
"""The t = 0 decoder NLL of dit-jax against the PyTorch statement, on 4M pixels, per example.

    python tools/measure_t0_term.py                                  # ours (and XLA's tanh) vs torch
    python tools/measure_t0_term.py --save ref.npy                   # also keep torch's values
    MKL_ENABLE_INSTRUCTIONS=AVX2 python tools/measure_t0_term.py --against ref.npy   # torch vs torch

Pixels: 4096 examples x 1024, std 0.004-0.018 (t = 0 scales), z uniform in [-15, 15] std from
the mean, 1/8 of them in the open edge bins. Prints the largest relative difference of the
per-example mean (random examples, and examples of pixels grouped by distance from the mean).
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inputs(n=4096, d=1024, seed=0):
    rng = np.random.default_rng(seed)
    log_scales = rng.uniform(-5.5, -4.0, n * d).astype(np.float32)
    means = rng.uniform(-1.5, 1.5, n * d).astype(np.float32)
    x = (means + rng.uniform(-15, 15, n * d) * np.exp(log_scales)).astype(np.float32)
    x[: n * d // 8] = rng.choice([-1.0, 1.0], n * d // 8)
    return x, means, log_scales, np.abs(x - means) * np.exp(-log_scales.astype(np.float64))


def per_example(ours, ref, order, d=1024):
    a, b = ours[order].reshape(-1, d).mean(1), ref[order].reshape(-1, d).mean(1)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def main() -> int:
    from dit_jax import platforms
    platforms.choose()  # CPU alone where there is no accelerator (no libtpu probing)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save", help="write torch's values here (.npy)")
    ap.add_argument("--against", help="compare torch's values with these (.npy) instead of with dit-jax")
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests", "torch_reference"))
    from diffusion import diffusion_utils as du

    import dit_jax.diffusion.gaussian as gaussian
    x, m, ls, z = inputs()
    ref = du.discretized_gaussian_log_likelihood(torch.from_numpy(x), means=torch.from_numpy(m),
                                                 log_scales=torch.from_numpy(ls)).numpy().astype(np.float64)
    if args.save:
        np.save(args.save, ref)
    orders = {"random examples": np.arange(len(x)), "pixels grouped by distance": np.argsort(z)}
    if args.against:
        other = np.load(args.against).astype(np.float64)
        for name, order in orders.items():
            print(f"torch vs {args.against}, {name}: {per_example(ref, other, order):.2e}")
        return 0
    for label, tanh in (("rounded_tanh", gaussian.rounded_tanh), ("XLA tanh", jnp.tanh)):
        gaussian.rounded_tanh = tanh  # the module global the CDF calls; a fresh jit traces it
        ours = np.asarray(jax.jit(lambda *a: gaussian.discretized_gaussian_log_likelihood(*a))(x, m, ls), np.float64)
        for name, order in orders.items():
            print(f"{label} vs torch, {name}: {per_example(ours, ref, order):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
