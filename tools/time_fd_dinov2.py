#!/usr/bin/env python
"""Time FD_DINOv2's feature extraction (dit_jax.metrics.fd_dinov2.dinov2_features) with the full ViT-L/14
detector and random weights: resize to 224, normalisation and forward in one jitted program.

    python tools/time_fd_dinov2.py --size 256 --batch 8 --batches 2

Prints the first batch's time (compilation included) and the steady rate of the batches after it.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="input image size (square)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=2, help="batches in all; the first one compiles")
    ap.add_argument("--resize", choices=("torch", "pil"), default="torch")
    args = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dit_jax.metrics import fd_dinov2 as fd
    from dit_jax.models.dinov2 import DinoV2, dinov2_config
    cfg = dinov2_config(fd.DETECTOR)
    params = jax.jit(DinoV2(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))["params"]
    rng = np.random.default_rng(0)
    times = []
    for _ in range(max(args.batches, 2)):
        images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
        t0 = time.time()
        fd.dinov2_features(params, images, cfg, resize_mode=args.resize, batch_size=args.batch)
        times.append(time.time() - t0)
    steady = sum(times[1:]) / len(times[1:])
    print(f"{jax.devices()[0].device_kind}: first batch {times[0]:.1f} s (with compilation); then "
          f"{steady:.2f} s per batch of {args.batch} = {args.batch / steady:.2f} img/s ({args.size} px, "
          f"resize {args.resize})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
