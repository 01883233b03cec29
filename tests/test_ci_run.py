""".ci/run runs the README's set-up lines and test command, read from README.md, with nothing added.

The README marks them (`<!-- ci: setup -->`, `<!-- ci: test -->`, each closed by `<!-- ci: end -->`);
`.ci/run --print` prints what it would run. Here the README is parsed on its own, in Python, and the two
must agree; a changed README must change what CI runs (the control that the script reads it).
"""

import os
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI = os.path.join(ROOT, ".ci", "run")


def readme_block(text: str, name: str) -> list[str]:
    """The command lines of the fenced block between `<!-- ci: NAME -->` and the next `<!-- ci: end -->`."""
    match = re.search(rf"^<!-- ci: {name} -->\n```bash\n(.*?)```\n<!-- ci: end -->$", text, flags=re.S | re.M)
    assert match, f"README.md has no fenced block marked <!-- ci: {name} -->"
    return [line for line in match.group(1).splitlines() if line.strip()]


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _printed(root: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(root, ".ci", "run"), "--print"], capture_output=True, text=True,
                          timeout=60)


def test_ci_runs_exactly_the_readme_setup_and_test_lines():
    text = _readme()
    setup, test = readme_block(text, "setup"), readme_block(text, "test")
    assert len(setup) == 2 and "-m venv .venv" in setup[0] and "pip install -e '.[test]'" in setup[1], setup
    assert test == [".venv/bin/python -m pytest -q tests -n 2 --dist loadfile --durations=15"], test
    out = _printed(ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == setup + test


def test_ci_adds_no_command_of_its_own():
    """Besides removing the old venv, the script's code names no interpreter, pip or pytest."""
    with open(CI) as f:
        code = [line.split("#", 1)[0] for line in f if not line.lstrip().startswith("#")]
    words = set(re.findall(r"[\w.\-]+", " ".join(code)))
    assert not words & {"python", "python3", "python3.12", "pip", "pytest", "PYENV_VERSION", "export"}, words
    assert "rm -rf .venv" in " ".join(code)


def test_ci_follows_an_edited_readme_and_refuses_an_unmarked_one(tmp_path):
    (tmp_path / ".ci").mkdir()
    shutil.copy(CI, tmp_path / ".ci" / "run")
    text = _readme().replace("--durations=15", "--durations=3")
    (tmp_path / "README.md").write_text(text)
    out = _printed(str(tmp_path))
    assert out.returncode == 0 and out.stdout.splitlines()[-1].endswith("--durations=3"), out
    (tmp_path / "README.md").write_text(text.replace("<!-- ci: test -->", ""))
    out = _printed(str(tmp_path))
    assert out.returncode == 2 and "README.md lacks" in out.stderr, out


def test_the_first_setup_line_finds_its_interpreter_as_written(tmp_path):
    """Line 1 as written, with the venv's work swapped for `--version`: no variable to export first.

    On a pyenv machine a bare `python3.12` is refused unless PYENV_VERSION names a 3.12 (exit 127:
    "pyenv: python3.12: command not found"); the line sets it inline, which an ordinary machine ignores."""
    line = readme_block(_readme(), "setup")[0]
    interpreter = line.split(" -m venv ")[0]
    words = shlex.split(interpreter)
    if not shutil.which(words[-1]):
        pytest.skip(f"no {words[-1]} on this machine's PATH")
    env = {k: v for k, v in os.environ.items() if k != "PYENV_VERSION"}
    out = subprocess.run(["bash", "-c", f"{interpreter} --version"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Python 3.12."), out.stdout
