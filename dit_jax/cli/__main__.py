"""`python -m dit_jax.cli ...`: the same as `dit-jax ...`."""

import sys

from dit_jax.cli.main import main

sys.exit(main())
