"""`dit-jax` command line: train | sample | evaluate | convert | export-weights | benchmark | compile | ..."""

from dit_jax.cli.main import *  # noqa: F401,F403  (the step before the split into one module per command)
from dit_jax.cli.main import _class_ids, main  # noqa: F401
