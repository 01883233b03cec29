"""Command-line arguments checked as they are parsed, each problem one line naming the flag.

argparse prints its usage and exits on a bad argument; here a bad argument raises ValueError (the
command line's `error: ...` line, exit code 2) instead, so that `dit-jax` answers every bad input
the same way and `main(argv)` can be called in-process. The `type=` functions say what a flag
holds (a count, a path that must exist, a directory to write...), so that a wrong value is refused
before any model is loaded, any dataset opened or anything compiled.
"""

from __future__ import annotations

import argparse
import math
import os


class UsageError(ValueError):
    """A command-line argument is missing, unknown or of the wrong kind."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UsageError (one line) instead of usage text and an exit.
    Its subcommand parsers are of this class too; every explicitly empty value is refused."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

    def _get_values(self, action, arg_strings):
        # `--flag ''` or `--flag=`: never a choice a user means (leave the flag out for its default).
        if (action.option_strings and arg_strings == [""]) or (not action.option_strings and "" in arg_strings):
            name = "/".join(action.option_strings) or action.dest
            raise argparse.ArgumentError(action, f"{name} is empty: give a value, or leave it out for its default")
        return super()._get_values(action, arg_strings)


def _local(path: str) -> bool:
    """A local path to check here ('' is a default meaning "not given"; a URI is checked when used)."""
    return bool(path) and "://" not in path


def count(low: int):
    """An integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def number(low: float = 0.0, strict: bool = False):
    """A float >= low (> low when strict)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > low if strict else value >= low) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def existing_file(text: str) -> str:
    """A file that exists (a URI is checked by the command that reads it)."""
    if _local(text):
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text} is a directory; a file is expected")
        if not os.path.isfile(text):
            raise argparse.ArgumentTypeError(f"no file {text}")
    return text


def existing_dir(text: str) -> str:
    """A directory that exists (a URI is checked by the command that reads it)."""
    if _local(text):
        if os.path.isfile(text):
            raise argparse.ArgumentTypeError(f"{text} is a file; a directory is expected")
        if not os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"no directory {text}")
    return text


def existing_path(text: str) -> str:
    """A file or a directory that exists (e.g. a checkpoint given as its file or its folder)."""
    if _local(text) and not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no file or directory {text}")
    return text


def _below_a_file(path: str) -> str | None:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return None if os.path.isdir(parent) else parent


def output_file(text: str) -> str:
    """A file to write: not a directory, and not below a regular file."""
    if _local(text):
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text} is a directory; name the file to write")
        blocker = _below_a_file(text)
        if blocker:
            raise argparse.ArgumentTypeError(f"{text} is below {blocker}, which is a file, not a directory")
    return text


def output_dir(text: str) -> str:
    """A directory to write into: not a regular file, and not below one."""
    if _local(text):
        if os.path.exists(text) and not os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text} is a file; a directory is expected")
        blocker = _below_a_file(text)
        if blocker:
            raise argparse.ArgumentTypeError(f"{text} is below {blocker}, which is a file, not a directory")
    return text


def output_path(text: str) -> str:
    """A file or directory to write (the command decides which): not below a regular file."""
    if _local(text):
        blocker = _below_a_file(text)
        if blocker:
            raise argparse.ArgumentTypeError(f"{text} is below {blocker}, which is a file, not a directory")
    return text
