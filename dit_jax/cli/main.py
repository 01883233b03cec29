"""`dit-jax` command line: train | sample | evaluate | convert | export-weights | benchmark | compile | ...

`main` parses the command line with each command's own parser (one module per command in this
package, in COMMANDS), runs the command, and maps whatever it raises to one line and an exit code
(`error_line`; the codes are listed in dit_jax/exit_codes.py).

A command module defines NAME, HELP, add_arguments(parser) and run(args) -> exit code. One that
takes a training config (train, compile, benchmark) also defines CONFIG, its default config file:
the arguments its parser does not know (`--config=FILE[:ARG]`, `--config.FIELD=VALUE`) are left in
`args.config_args` for dit_jax.cli.config_args; any other command refuses them.
"""

from __future__ import annotations

import importlib
import os
import sys

from dit_jax.argparsing import OneLineParser

# In the order `dit-jax --help` lists them.
COMMANDS = ("sample", "convert", "build_dataset", "reference_batch", "extract_latents", "export_weights", "models",
            "train", "compile", "benchmark", "evaluate")


def command_modules() -> list:
    return [importlib.import_module(f"dit_jax.cli.{name}") for name in COMMANDS]


def version() -> str:
    from importlib import metadata
    try:
        mine = metadata.version("dit-jax")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        mine = "unknown (not installed)"
    import jax
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return f"dit-jax {mine} (jax {jax.__version__}, {package})"


class _Version(__import__("argparse").Action):
    """--version, computed only when asked (it imports jax)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())
        parser.exit()


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="dit-jax", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, add_help=getattr(module, "ADD_HELP", True),
                           description=getattr(module, "DESCRIPTION", None), epilog=getattr(module, "EPILOG", None))
        module.add_arguments(p)
        p.set_defaults(run=module, parser=p)
    return parser


def parse_args(argv: list[str]):
    """The parsed command line; `args.run` is the command's module, `args.config_args` its config arguments."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args.run, "CONFIG", None) is None:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.config_args = rest
    return args


def prepare_process() -> None:
    """What a `dit-jax` process sets before jax starts a backend."""
    from dit_jax import host_memory, platforms
    platforms.choose()  # no libtpu noise where there is no TPU
    host_memory.keep_freed_memory()  # CPU alone: the step's freed buffers stay in one heap (its docstring)


def error_line(error: BaseException, args=None) -> tuple[str | None, int] | None:
    """(the line to print, or None when the raiser already said it; the exit code) for an exception
    that ends a command, or None for a crash (its traceback, exit 1). The one mapping of `dit-jax`."""
    from absl.flags import Error as FlagsError

    from dit_jax import exit_codes
    if isinstance(error, exit_codes.RunStopped):
        # A preemption is announced by the loop; e.g. sample's shards changed under it: one line (rerun resumes).
        return (None if isinstance(error, exit_codes.Preempted) else str(error)), error.exit_code
    if isinstance(error, FloatingPointError):  # what jax_debug_nans raises: a divergence
        return str(error), exit_codes.DIVERGED
    if isinstance(error, (ValueError, KeyError, ImportError, FlagsError)):
        return (error.args[0] if isinstance(error, KeyError) and error.args else str(error)), exit_codes.BAD_INPUT
    if isinstance(error, OSError):  # a path that cannot be used is bad input; a dropped connection is not
        line = exit_codes.permanent_os_error(error)
        return None if line is None else (line, exit_codes.BAD_INPUT)
    line = exit_codes.out_of_memory(error)
    return None if line is None else (line, exit_codes.BAD_INPUT)


def main(argv=None) -> int:
    prepare_process()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        args = parse_args(argv)
        return args.run.run(args)
    except SystemExit as e:  # --help and --version print, then exit 0
        return e.code if isinstance(e.code, int) else 0
    except Exception as e:  # noqa: BLE001 - every error is mapped here, or re-raised with its traceback
        mapped = error_line(e, args)
        if mapped is None:
            raise
        line, code = mapped
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
        return code
