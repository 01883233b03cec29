"""`dit-jax` command line: one module per command, `main` (dit_jax.cli.main) parses, runs and maps errors.

`dit_jax.cli.main` the attribute is the function (the console script's `dit_jax.cli:main`); the
module of the same name is reached with `from dit_jax.cli.main import ...` or sys.modules.
"""

from dit_jax.cli.main import build_parser, main, parse_args, prepare_process, version  # noqa: F401
