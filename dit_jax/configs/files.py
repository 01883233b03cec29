"""Config files, `--config=FILE[:ARG]`: found, run and overridden in one place, for `dit-jax train`,
`dit-jax compile` and Python (`load_config`).

A config file is Python that defines `get_config(arg)` returning an ml_collections ConfigDict
(configs/demo.py, configs/dit.py). It is run here rather than by ml_collections, so that whatever
goes wrong in it (a syntax error, an exception in get_config, no get_config at all) is one line
naming the file, the line and what is wrong, instead of a chain of tracebacks. Command-line
overrides (`--config.batch_size=64`) are then typed by ml_collections against the loaded config.
"""

from __future__ import annotations

import importlib.util
import os
import re
import traceback

import ml_collections

USAGE = "pass --config=FILE[:ARG], e.g. --config=configs/dit.py:XL/2"


class ConfigFileError(ValueError):
    """The config file is missing, does not run, or its get_config fails (bad input: exit 2)."""


def packaged_config(name: str) -> str:
    """The path of a config file shipped with the package ('dit.py', 'demo.py'): beside this module."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


def resolve_config_spec(spec: str) -> str:
    """'configs/dit.py:XL/2' -> the same spec with a path that exists.

    A path that exists (relative to the working directory, or absolute) is kept. `configs/NAME.py`
    that does not exist here names the packaged copy, so the README's commands work from any
    directory and any install, not only inside a checkout. Anything else is returned unchanged
    (the caller reports it missing).
    """
    path, sep, arg = spec.partition(":")
    if not os.path.isfile(path):
        head, name = os.path.split(os.path.normpath(path))
        if head == "configs" and os.path.isfile(packaged_config(name)):
            path = packaged_config(name)
    return path + sep + arg


def _line_in(error: BaseException, path: str) -> str:
    """'FILE:LINE' of the deepest frame of `error` inside the config file (the line that raised, or
    the call that led to it), else FILE."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    return f"{path}:{frames[-1].lineno}" if frames else path


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/dit.py:XL/2' -> that file's get_config('XL/2') (get_config() without ':ARG').
    Raises ConfigFileError, in one line, for anything wrong with the file."""
    if not spec:
        raise ConfigFileError(f"--config is empty: {USAGE}")
    path, _, arg = resolve_config_spec(spec).partition(":")
    if os.path.isdir(path):
        raise ConfigFileError(f"config file {path!r} is a directory: {USAGE}")
    if not os.path.isfile(path):
        raise ConfigFileError(f"config file {path!r} not found: {USAGE}")
    if not path.endswith(".py"):
        raise ConfigFileError(f"config file {path!r} is not a Python file (.py): {USAGE}")
    module_spec = importlib.util.spec_from_file_location("dit_jax_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigFileError(f"{path}:{e.lineno}: syntax error in the config file: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - whatever the file raises, it is the file that is wrong
        raise ConfigFileError(f"{_line_in(e, path)}: running the config file raised {_one_line(e)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigFileError(f"{path} defines no get_config(): a config file defines get_config(arg) returning "
                              "an ml_collections.ConfigDict (see configs/demo.py)")
    try:
        config = get_config(arg) if arg else get_config()
    except Exception as e:  # noqa: BLE001
        call = f"get_config({arg!r})" if arg else "get_config()"
        raise ConfigFileError(f"{_line_in(e, path)}: {call} raised {_one_line(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(f"{path}: get_config returned a {type(config).__name__}, not an "
                              "ml_collections.ConfigDict")
    return config


def split_config_arg(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --config value given last, or None; argv without any --config FILE / --config=FILE)."""
    spec, rest, skip = None, [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigFileError(f"--config needs a value: {USAGE}")
            spec, skip = argv[i + 1], True
        elif arg.startswith("--config="):
            spec = arg[len("--config="):]
        else:
            rest.append(arg)
    return spec, rest


def parse(argv: list[str], flag_values, default: str, help_string: str) -> tuple[str, list[str]]:
    """Define `config` on the absl `flag_values` from the --config file in `argv` (else `default`),
    with its --config.FIELD=VALUE overrides, and parse `argv` (argv[0] is the program name).
    Returns (the config spec used, the positional arguments left). Every error is one line
    (ConfigFileError, or ValueError for a bad override)."""
    from absl import flags
    from ml_collections import config_flags

    spec, argv = split_config_arg(argv)
    spec = default if spec is None else spec
    config = load_config(spec)
    try:  # the overrides are looked up as the flag is defined, and typed as argv is parsed
        config_flags.DEFINE_config_dict("config", config, help_string, flag_values=flag_values, lock_config=True,
                                        sys_argv=argv)
        return spec, flag_values(argv)[1:]
    except AttributeError as e:  # an unknown --config.key: ml_collections says which and suggests one
        m = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"', str(e))
        hint = f"{m.group(2)!r}; did you mean {m.group(1)!r}?" if m else str(e)
        raise ValueError(f"unknown config key {hint}") from None
    except KeyError as e:  # an unknown section on the way to a field (--config.eval.kind, now config.evals)
        raise ValueError(f"unknown config key {e.args[0]!r} in {' '.join(a for a in argv if a.startswith('--config.'))}"
                         f" (see `{argv[0]} --help` for the config's fields)") from None
    except flags.Error as e:  # a value of the wrong type: its first and last lines say which and why
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise ValueError(lines[0] if len(lines) == 1 else f"{lines[0]}: {lines[-1]}") from None


def config_from_args(args: list[str], default: str, prog: str) -> ml_collections.ConfigDict:
    """The config that `--config=FILE[:ARG]` and `--config.FIELD=VALUE` in `args` (a command's arguments
    besides its own flags) describe, `default` without --config; any other argument is an error."""
    from absl import flags
    fv = flags.FlagValues()
    _, positional = parse([prog] + list(args), fv, default, "config file, e.g. configs/dit.py:XL/2")
    if positional:
        raise ValueError(positional_problem(prog, positional))
    return fv.config


def positional_problem(prog: str, positional: list[str]) -> str:
    """The line for arguments that are neither flags nor config overrides (a config file given bare?)."""
    first = positional[0]
    if ".py" in first:
        return f"unexpected argument {first!r}: to use that config file, pass --config={first}"
    return (f"unexpected argument(s) {positional}: {prog} takes only flags (--config=FILE, --config.FIELD=VALUE "
            f"and its own); see {prog} --help")
