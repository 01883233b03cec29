"""Every flag of every `dit-jax` subcommand, fed an empty value, a value of the wrong type, a path that
does not exist and a file where a directory is expected (and the reverse): one `error:` line, no
traceback, exit code 2, and the command's work never starts. All in-process and without jax
compiling anything: the commands are replaced by stubs that fail the test if they are reached."""

import argparse
import os

import pytest

from dit_jax import argparsing, cli
from dit_jax.cli import main
from dit_jax.cli.common import class_ids
from dit_jax.cli.main import command_modules
from helpers import one_error_line

COMMANDS = [name for name in cli.build_parser()._subparsers._group_actions[0].choices
            if name not in ("train", "compile")]  # those two parse with absl: swept below


def _subparser(name):
    return cli.build_parser()._subparsers._group_actions[0].choices[name]


@pytest.fixture
def paths(tmp_path):
    file, directory = tmp_path / "a_file.bin", tmp_path / "a_dir"
    file.write_bytes(b"x")
    directory.mkdir()
    return {"file": str(file), "dir": str(directory), "missing": str(tmp_path / "missing"),
            "new_file": str(tmp_path / "new.npz"), "new_dir": str(tmp_path / "new_dir"),
            "below_file": str(file / "inside")}


def _is_number(kind) -> bool:  # argparsing.count(k) / number(...) functions
    name = getattr(kind, "__name__", "")
    return name == "number" or name.startswith("integer")


def _good(action, paths) -> str:
    """A value the flag accepts (what the other flags hold while one is swept)."""
    kind = action.type
    if action.choices:
        return str(list(action.choices)[0])
    if kind in (argparsing.existing_file, argparsing.existing_path):
        return paths["file"]
    if kind is argparsing.existing_dir:
        return paths["dir"]
    if kind is argparsing.output_file:
        return paths["new_file"]
    if kind in (argparsing.output_dir, argparsing.output_path):
        return paths["new_dir"]
    if _is_number(kind):
        return "1"
    if kind is class_ids:
        return "1,2"
    return "x"


# Each bad value: (case, the `paths` key or literal it is, the flag kinds it applies to; None: all).
BAD = [
    ("empty", "", None),
    ("wrong type", "abc", "number"),
    ("wrong type", "1,,2", class_ids),
    ("missing path", "{missing}", (argparsing.existing_file, argparsing.existing_dir, argparsing.existing_path)),
    ("file where a directory is expected", "{file}", (argparsing.existing_dir, argparsing.output_dir)),
    ("directory where a file is expected", "{dir}", (argparsing.existing_file, argparsing.output_file)),
    ("below a regular file", "{below_file}", (argparsing.output_file, argparsing.output_dir,
                                              argparsing.output_path)),
]


def _bad_values(action) -> list[tuple[str, str]]:
    out = []
    for case, value, kinds in BAD:
        if (kinds is None or (kinds == "number" and _is_number(action.type))
                or (isinstance(kinds, tuple) and action.type in kinds) or action.type is kinds):
            out.append((case, value))
    return out


def _value_actions(parser):
    return [a for a in parser._actions if a.nargs != 0 and not isinstance(a, argparse._HelpAction)]


def _base(parser, paths, skip):
    """argv with every required argument given a good value (the mutually exclusive required group:
    its first member, unless `skip` is one of them)."""
    positional, optional = [], []
    for group in parser._mutually_exclusive_groups:
        if group.required and not any(a is skip for a in group._group_actions):
            a = group._group_actions[0]
            optional += [a.option_strings[0], _good(a, paths)]
    for a in _value_actions(parser):
        if a is skip:
            continue
        if not a.option_strings:
            positional.append(_good(a, paths))
        elif a.required:
            optional += [a.option_strings[0], _good(a, paths)]
    return positional, optional


def _cases():
    out = []
    for name in COMMANDS:
        for action in _value_actions(_subparser(name)):
            for case, value in _bad_values(action):
                out.append(pytest.param(name, action.dest, value, id=f"{name} {action.dest} {case}"))
    return out


@pytest.fixture
def stubs(monkeypatch):
    """Every command replaced by a stub that fails the test: a bad argument must stop before it."""
    reached = []
    for module in command_modules():
        if module.NAME != "train":
            monkeypatch.setattr(module, "run", lambda args, name=module.NAME: reached.append(name) or 0)
    return reached


@pytest.mark.parametrize("name, dest, value", _cases())
def test_every_flag_of_every_subcommand(paths, stubs, capsys, name, dest, value):
    parser = _subparser(name)
    action = next(a for a in _value_actions(parser) if a.dest == dest)
    bad = value.format(**paths)
    positional, optional = _base(parser, paths, skip=action)
    if action.option_strings:
        argv = [name, *positional, *optional, action.option_strings[0], bad]
    else:
        at = [a for a in _value_actions(parser) if not a.option_strings].index(action)
        positional.insert(at, bad)
        argv = [name, *positional, *optional]
    assert main(argv) == 2, argv
    one_error_line(capsys)
    assert stubs == [], f"{argv} reached the command"


def test_the_base_command_lines_are_accepted(paths, stubs, capsys):
    """The control: with only good values each command is reached, so the refusals above are the
    bad values' doing."""
    for name in COMMANDS:
        positional, optional = _base(_subparser(name), paths, skip=None)
        assert main([name, *positional, *optional]) == 0, (name, capsys.readouterr().err)
    assert len(stubs) == len(COMMANDS)


# ---------------------------------------------------------------------------------- train, compile

TRAIN_FLAGS = {"workdir": None, "coordinator": None, "num_processes": "int", "process_id": "int",
               "distributed_timeout": "int", "local_device_ids": "ints", "config": "config"}


def _train_cases():
    out = []
    for flag, kind in TRAIN_FLAGS.items():
        out.append((flag, "empty", ""))
        if kind in ("int", "ints"):
            out.append((flag, "wrong type", "abc" if kind == "int" else "a,b"))
        if kind == "config":
            out += [(flag, "missing path", "{missing}.py"), (flag, "directory where a file is expected", "{dir}")]
        if flag == "workdir":
            out += [(flag, "file where a directory is expected", "{file}"),
                    (flag, "below a regular file", "{below_file}")]
    return out


@pytest.fixture
def no_training(monkeypatch):
    from dit_jax.train import loop
    reached = []
    monkeypatch.setattr(loop, "train_and_evaluate", lambda config, workdir: reached.append(workdir))
    return reached


@pytest.mark.parametrize("flag, case, value", _train_cases(), ids=[f"{f} {c}" for f, c, _ in _train_cases()])
def test_every_train_flag(paths, no_training, capsys, flag, case, value):
    argv = ["train", f"--workdir={paths['new_dir']}", f"--{flag}={value.format(**paths)}"]
    assert main(argv) == 2, argv
    one_error_line(capsys)
    assert no_training == []


def _config_fields():
    from ml_collections import config_dict

    from dit_jax.configs.files import load_config, packaged_config
    out = []

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, config_dict.ConfigDict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float)):
                out.append(f"{prefix}{key}")
    walk(load_config(packaged_config("demo.py")), "")
    return out


@pytest.mark.parametrize("field", _config_fields())
def test_every_numeric_or_boolean_config_field_with_a_wrong_type(paths, no_training, capsys, field):
    assert main(["train", f"--workdir={paths['new_dir']}", f"--config.{field}=abc"]) == 2
    one_error_line(capsys, field)
    assert no_training == []


def test_train_control(paths, no_training, capsys):
    assert main(["train", f"--workdir={paths['new_dir']}"]) == 0 and no_training == [paths["new_dir"]]


COMPILE_CASES = [("--topology", ""), ("--num-slices", ""), ("--num-slices", "abc"), ("--num-slices", "0"),
                 ("--hbm-gib", ""), ("--hbm-gib", "abc"), ("--hbm-gib", "-1"), ("--max-tries", ""),
                 ("--max-tries", "abc"), ("--config", ""), ("--config", "{missing}.py"), ("--config", "{dir}"),
                 ("--config.batch_size", "abc")]


@pytest.fixture
def no_compiling(monkeypatch):
    from dit_jax.jobs import compile as compile_check
    reached = []

    def stop(target):
        reached.append(target)
        raise ValueError("stub: the target's devices were asked for")
    monkeypatch.setattr(compile_check, "target_devices", stop)
    return reached


@pytest.mark.parametrize("flag, value", COMPILE_CASES, ids=[f"{f} {v!r}" for f, v in COMPILE_CASES])
def test_every_compile_flag(paths, no_compiling, capsys, flag, value):
    argv = ["compile", "--topology=v5p-8", f"{flag}={value.format(**paths)}"]
    assert main(argv) == 2, argv
    one_error_line(capsys)
    assert no_compiling == []


def test_compile_control(no_compiling, capsys):
    assert main(["compile", "--topology=v5p-8"]) == 2 and len(no_compiling) == 1
    one_error_line(capsys, "stub: the target's devices were asked for")


def test_no_subcommand_and_unknown_ones_are_one_line(capsys):
    for argv in ([], ["nonsense"], ["sample", "--no-such-flag"], ["sample", "--num"]):
        assert main(argv) == 2, argv
        one_error_line(capsys)
    assert os.environ.get("JAX_PLATFORMS") == "cpu"  # (conftest's choice is kept: main never overrides it)
