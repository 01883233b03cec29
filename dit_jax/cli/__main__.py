"""`python -m dit_jax.cli ...`: the same as `dit-jax ...`."""

import sys

from dit_jax.cli.main import main

if __name__ == "__main__":  # importing the module (e.g. a walk over the package) runs nothing
    sys.exit(main())
