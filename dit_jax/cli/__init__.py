"""`dit-jax` command line: one module per command, `main` (dit_jax.cli.main) parses, runs and maps errors."""

from dit_jax.cli.main import build_parser, main, parse_args, prepare_process, version  # noqa: F401
