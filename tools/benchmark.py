#!/usr/bin/env python
"""Speed of dit-jax beside the PyTorch reference: the same as `dit-jax benchmark` (see --help).

    python tools/benchmark.py --model XL/2 --setting batch=32 --setting batch=256,remat=full \\
        --sample-steps 250 --cfg-scale 1.5 --torch --out experiments/perf_h100/bench.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dit_jax.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
