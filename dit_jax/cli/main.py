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

import argparse
import errno
import importlib
import os
import re
import sys

from dit_jax.argparsing import OneLineParser

# In the order `dit-jax --help` lists them.
COMMANDS = ("sample", "convert", "build_dataset", "reference_batch", "extract_latents", "export_weights", "phema", "models",
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


class _Version(argparse.Action):
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


# Library exceptions met while reading a user's file (a damaged or foreign file): bad input, one line.
_READER_ERRORS = ("SafetensorError", "BadZipFile", "UnpicklingError", "EOFError", "JSONDecodeError",
                  "UnicodeDecodeError", "DecodeError", "ExtraData", "UnpackValueError")
# Where a remote store's client raises from (no network, no credentials, access refused).
_STORE_MODULES = ("aiohttp", "gcsfs", "google.auth", "google.api_core", "fsspec")
# Libraries that read files: a ValueError or KeyError they raise is about the file being read.
_READERS = re.compile(r"[/\\](orbax|tensorstore|safetensors|numpy[/\\]lib|json|pickle|zipfile|msgpack|etils|torch[/\\]"
                      r"serialization)")
# The locals of our frames that name what is being read.
_PATH_NAMES = re.compile(r"path|file|dir|weights|checkpoint|reference|samples|inception|vae|src|source")
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frames(error: BaseException):
    tb = error.__traceback__
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def _ours(frame) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE + os.sep)


def _user_file(error: BaseException) -> str | None:
    """The file that dit-jax code was reading when `error` rose below it: the innermost of our frames
    holding a local path that exists (`path`, `file`, `weights`, ...)."""
    for frame in reversed([f for f in _frames(error) if _ours(f)]):
        for name, value in frame.f_locals.items():
            if isinstance(value, (str, os.PathLike)) and _PATH_NAMES.search(name):
                text = os.fspath(value)
                if text and len(text) < 4096 and "\n" not in text and os.path.exists(text) and text not in ".":
                    return text
    return None


def _raised_by_reader(error: BaseException) -> bool:
    """Whether the innermost frame is a file-reading library's (Orbax, TensorStore, numpy's npz, json...)."""
    frames = list(_frames(error))
    return bool(frames) and bool(_READERS.search(os.path.abspath(frames[-1].f_code.co_filename)))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _library_line(error: BaseException) -> str:
    """`FILE: cannot be read (Type: text)` for a library's exception, naming the file when we can."""
    what = f"{type(error).__name__}: {_one_line(error)}"
    path = _user_file(error)
    if path is None:
        return f"a file could not be read ({what})"
    return f"{path}: cannot be read ({what}): is it the file you meant, and complete? Remake it or pass another"


def _store_line(error: BaseException) -> str:
    """One line for a remote store that cannot be reached or refuses access."""
    from dit_jax import storage
    endpoint = storage.store_endpoint()
    cause = _one_line(error) or type(error).__name__
    if type(error).__module__.startswith("google.auth"):
        return (f"no credentials for the store at {endpoint} ({cause}): run `gcloud auth application-default login` "
                "or set GOOGLE_APPLICATION_CREDENTIALS")
    return f"the store at {endpoint} failed ({type(error).__name__}: {cause}): check the network, credentials and path"


def _os_line(error: OSError, args) -> str | None:
    """A permanent OSError's line, naming the path (a full disk met while writing --out names --out)."""
    from dit_jax import exit_codes
    if error.filename is None and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        where = getattr(args, "out", None) or getattr(args, "workdir", None) or _user_file(error)
        if where:
            error = OSError(error.errno, error.strerror, where)
    return exit_codes.permanent_os_error(error)


def error_line(error: BaseException, args=None) -> tuple[str | None, int] | None:
    """(the line to print, or None when the raiser already said it; the exit code) for an exception
    that ends a command, or None for a crash (its traceback, exit 1). The one mapping of `dit-jax`;
    the codes are listed in dit_jax/exit_codes.py."""
    from absl.flags import Error as FlagsError

    from dit_jax import exit_codes, storage
    if isinstance(error, KeyboardInterrupt):
        said = getattr(getattr(args, "run", None), "interrupted_message", lambda args: None)(args)
        return said or "interrupted", exit_codes.INTERRUPTED
    if isinstance(error, exit_codes.RunStopped):
        # A preemption is announced by the loop; e.g. sample's shards changed under it: one line (rerun resumes).
        return (None if isinstance(error, exit_codes.Preempted) else str(error)), error.exit_code
    if isinstance(error, FloatingPointError):  # what jax_debug_nans raises: a divergence
        return str(error), exit_codes.DIVERGED
    if isinstance(error, storage.StoreUnreachable) or type(error).__module__.startswith(_STORE_MODULES):
        return (str(error) if isinstance(error, storage.StoreUnreachable) else _store_line(error)), exit_codes.BAD_INPUT
    if type(error).__name__ in _READER_ERRORS:
        return _library_line(error), exit_codes.BAD_INPUT
    if isinstance(error, (ValueError, KeyError, ImportError, FlagsError)):
        line = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        if _raised_by_reader(error) and _user_file(error):  # a reader's raw text: say which file
            line = _library_line(error)
        return line, exit_codes.BAD_INPUT
    if isinstance(error, OSError):  # a path that cannot be used is bad input; a dropped connection is not
        line = _os_line(error, args)
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
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - each is mapped here, or re-raised: a traceback
        mapped = error_line(e, args)
        if mapped is None:
            raise
        line, code = mapped
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
        return code
