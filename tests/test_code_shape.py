"""The shape of the code: no function in dit_jax/ over 80 lines (from its `def` to its last line),
so that each one can be read on a screen. The offenders are listed with their length."""

import ast
import pathlib

import dit_jax

LIMIT = 80
PACKAGE = pathlib.Path(dit_jax.__file__).parent


def long_functions(root: pathlib.Path, limit: int = LIMIT) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}: {lines} lines")
    return out


def test_no_function_in_the_package_is_over_80_lines():
    assert long_functions(PACKAGE) == [], "split these functions:\n" + "\n".join(long_functions(PACKAGE))


def test_the_check_finds_a_long_function(tmp_path):
    """The negative control: an 81-line function (and a nested one) are found, an 80-line one is not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    (pkg / "a.py").write_text(f"def ok():\n{body}\n\n\ndef too_long():\n{body}\n    return 0\n\n\n"
                              f"class C:\n    def method(self):\n        def inner():\n"
                              + "\n".join(f"            y{i} = {i}" for i in range(80)) + "\n        return inner\n")
    found = long_functions(pkg)
    assert [f.split(" ")[1] for f in found] == ["too_long:", "method:", "inner:"], found
