"""The one `--config` front end of `train`, `compile` and `benchmark`.

A command that takes a training config declares `CONFIG` (its default config file); `main` leaves
the arguments its parser does not know (`--config=FILE[:ARG]`, `--config.FIELD=VALUE`) to this
module, which loads the file and types the overrides through dit_jax.configs.files. `describe` lists
the fields of a config for `--help`, each with the comment written above it in the config defaults.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize

from dit_jax.configs.files import config_from_args, packaged_config


def load(args, default: str, prog: str):
    """The config that `args.config_args` describe (`default`, a packaged config file, without --config)."""
    return config_from_args(args.config_args, packaged_config(default), prog)


def given(args) -> bool:
    """Whether the command line named a config file."""
    return any(a == "--config" or a.startswith("--config=") for a in args.config_args)


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """{line: (comment text, whether the comment is alone on its line)}."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            alone = not tok.line[:tok.start[1]].strip()
            out[tok.start[0]] = (tok.string.lstrip("#").strip(), alone)
    return out


def _above(comments, line: int) -> list[str]:
    """The block of whole-line comments right above `line`."""
    block = []
    while (line - 1) in comments and comments[line - 1][1]:
        line -= 1
        block.insert(0, comments[line][0])
    return block


def _field_path(target) -> str | None:
    """`c.data.vae` -> 'data.vae' (assignments to the config being built)."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.insert(0, target.attr)
        target = target.value
    return ".".join(parts) if isinstance(target, ast.Name) and target.id == "c" and parts else None


def _keywords(node):
    """The keyword arguments of the dict(...) calls that a section's value is built from."""
    for call in ast.walk(node):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "dict":
            yield from call.keywords


def _keyword_notes(keywords, comments, prefix: str, out: dict, section_line: int) -> None:
    """A keyword's comments: the block above its line (if it opens the line, and the line is not the
    section's own, whose comments are the section's) and the comment that ends its line (if it is the
    line's last keyword)."""
    by_line: dict[int, list] = {}
    for kw in keywords:
        by_line.setdefault(kw.value.lineno, []).append(kw)
    for line, kws in by_line.items():
        first, last = kws[0], kws[-1]
        end = last.value.end_lineno
        notes = {first.arg: [] if line == section_line else _above(comments, line)}
        if end in comments and not comments[end][1]:  # "# vae: ..." names its field; else the last one's
            text = comments[end][0]
            named = next((kw.arg for kw in kws if text.startswith(f"{kw.arg}:")), last.arg)
            notes.setdefault(named, []).append(text[len(named) + 1:].strip() if text.startswith(f"{named}:") else text)
        for arg, text in notes.items():
            if text:
                out[f"{prefix}{arg}"] = " ".join(text)


def field_descriptions(source: str) -> dict[str, str]:
    """{'data.latents': "...", 'batch_size': '...'}: the comments of a config-defaults module's
    `c.FIELD = ...` assignments and of the keyword fields of its sections."""
    comments, out = _comments(source), {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        path = _field_path(node.targets[0])
        if path is None:
            continue
        text = _above(comments, node.lineno)
        if node.end_lineno == node.lineno and node.lineno in comments and not comments[node.lineno][1]:
            text.append(comments[node.lineno][0])
        if text:
            out[path] = " ".join(text)
        _keyword_notes(list(_keywords(node.value)), comments, f"{path}.", out, node.lineno)
    return out


def _defaults_source() -> str:
    import inspect

    from dit_jax.configs import base
    return inspect.getsource(base)


def describe(config) -> list[str]:
    """Every field of `config` with its value, under the description its default has."""
    from ml_collections import config_dict
    notes = field_descriptions(_defaults_source())
    lines = []

    def note(path: str, indent: str) -> None:
        if path in notes:
            lines.extend(textwrap.wrap(notes[path], 112, initial_indent=indent, subsequent_indent=indent))

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, config_dict.ConfigDict):
                note(f"{prefix}{key}", "  # ")
                walk(value, f"{prefix}{key}.")
            else:
                lines.append(f"  {prefix}{key} = {value!r}")
                note(f"{prefix}{key}", "      ")
    walk(config, "")
    return lines
