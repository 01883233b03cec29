"""Nested-dict access by a tuple path, shared by the weight converters."""

from __future__ import annotations

from typing import Any, Mapping


def set_path(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: Mapping, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree
