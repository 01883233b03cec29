"""Every `dit-jax train` command that README.md, docs/, experiments/ and configs/ show, run as written with --dry_run.

The commands are read from the files themselves (fenced blocks, with their line continuations and
comments, and inline code), so a command that is edited there is the command tested here. Commands
of the demo config are checked in full on this machine (dataset, files, workdir); the pod commands
with --nocheck_files for a 64-device slice, since their datasets and VAEs live on the hosts.
Then `--dry_run` itself: its file checks, its plan, and that it writes nothing.
"""

import glob
import os
import re
import shlex

import pytest

from dit_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = re.compile(r"^(?:\S*/)?dit-jax train\b")


def _fenced_commands(text: str) -> list[str]:
    commands, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if PROGRAM.match(pending.strip()):
            commands.append(pending.strip())
        pending = ""
    return commands


def _inline_commands(text: str) -> list[str]:
    """`dit-jax train ...` in inline code (which may wrap a line), less those that elide with '...'."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = (" ".join(m.split()) for m in re.findall(r"`(dit-jax train[^`]*)`", text))
    return [s for s in spans if "..." not in s and not s.endswith("--help")]


def _docstring_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if PROGRAM.match(line.strip())]


def documentation_pages() -> list[str]:
    """Every page a reader may copy a command from: the README and each Markdown file under docs/ and
    experiments/, at any depth."""
    return ["README.md", *sorted(glob.glob("docs/**/*.md", root_dir=ROOT, recursive=True)),
            *sorted(glob.glob("experiments/**/*.md", root_dir=ROOT, recursive=True))]


def _all_commands() -> list[tuple[str, str]]:
    found = []
    for path in documentation_pages():
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        found += [(path, c) for c in _fenced_commands(text) + _inline_commands(text)]
    for path in sorted(glob.glob("configs/*.py", root_dir=ROOT)):
        with open(os.path.join(ROOT, path)) as f:
            found += [(path, c) for c in _docstring_commands(f.read())]
    return list(dict.fromkeys(found))


COMMANDS = _all_commands()


def test_pages_are_found_at_any_depth(tmp_path, monkeypatch):
    """The control on documentation_pages(): a nested page under docs/ is read, a non-Markdown file is not."""
    import sys
    this = sys.modules[__name__]
    (tmp_path / "docs" / "topic").mkdir(parents=True)
    (tmp_path / "docs" / "topic" / "deep.md").write_text("```bash\ndit-jax train --workdir runs/deep\n```\n")
    (tmp_path / "docs" / "notes.txt").write_text("dit-jax train --workdir runs/txt\n")
    (tmp_path / "README.md").write_text("")
    monkeypatch.setattr(this, "ROOT", str(tmp_path))
    assert this.documentation_pages() == ["README.md", "docs/topic/deep.md"]
    assert ("docs/topic/deep.md", "dit-jax train --workdir runs/deep") in this._all_commands()


SUBCOMMAND = re.compile(r"^(?:\S*/)?dit-jax ([a-z][a-z-]*)\b")


def test_every_documented_subcommand_exists(capsys):
    """`dit-jax NAME ...` lines of every page's code blocks name a command that `dit-jax --help` lists."""
    try:
        code = main(["--help"])
    except SystemExit as e:  # argparse's own --help exits
        code = e.code
    assert code in (0, None)
    listed = capsys.readouterr().out
    named = {}
    for path in documentation_pages():
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                m = SUBCOMMAND.match(line.strip())
                if m:
                    named.setdefault(m.group(1), path)
    assert {"train", "sample", "convert", "evaluate", "compile"} <= set(named), named
    missing = {name: path for name, path in named.items() if not re.search(rf"\b{name}\b", listed)}
    assert not missing, f"commands shown in the documentation that `dit-jax --help` does not list: {missing}"


def _train_args(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    assert PROGRAM.match(" ".join(words[:2])), command
    return words[2:]


def _is_demo(args: list[str]) -> bool:
    config = next((a.split("=", 1)[1] if "=" in a else args[i + 1] for i, a in enumerate(args)
                   if a == "--config" or a.startswith("--config=")), "configs/demo.py")
    # The demo, and the laptop variants of the other recipes on the same digits (configs/meanflow.py:demo,
    # configs/repa.py:digits): checked in full on this machine, as the demo is.
    return config.startswith("configs/demo.py") or config.endswith((":demo", ":digits"))


def test_the_files_hold_the_commands_this_test_is_about():
    """The extraction finds the commands a reader sees (a control on the parser above)."""
    sources = {path for path, _ in COMMANDS}
    assert {"README.md", "docs/training.md", "docs/demo.md", "docs/data.md", "experiments/demo_digits/README.md",
            "configs/dit.py", "configs/sit.py", "configs/demo.py"} <= sources, sources
    assert any("configs/dit.py:XL/2" in c and "--workdir gs://bucket/dit-xl2 " in c for _, c in COMMANDS)
    assert len(COMMANDS) >= 15, COMMANDS


@pytest.mark.parametrize("source,command", COMMANDS, ids=[f"{p}:{c[14:70]}" for p, c in COMMANDS])
def test_command_passes_its_dry_run_as_written(source, command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative workdirs land here, and nothing may be written anyway
    args = _train_args(command)
    if _is_demo(args):
        code = main(["train", *args, "--dry_run"])
    else:
        code = main(["train", *args, "--dry_run", "--nocheck_files", "--devices=64"])
    out = capsys.readouterr()
    assert code == 0, f"{source}: {command}\n{out.err[-2000:]}"
    assert "dry run: every check passed; nothing was written" in out.out
    assert os.listdir(tmp_path) == []


def test_negative_control_the_paper_command_without_a_vae_fails_its_dry_run(tmp_path, monkeypatch, capsys):
    """The command the README showed before the dry run existed: a VAE-encoding config with no VAE."""
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--config", "configs/dit.py:XL/2", "--workdir", "gs://bucket/dit-xl2",
                 "--config.batch_size=256", "--dry-run", "--nocheck_files", "--devices=64"])
    err = capsys.readouterr().err
    assert code == 2
    assert "data.latents='encode' needs the VAE" in err and err.count("\n") == 1


def _tiny_vae_dir(tmp_path) -> str:
    """A weights directory as `dit-jax convert --from-diffusers-vae` writes (random weights, small config)."""
    import jax

    from dit_jax.models.vae import DOWN_BLOCK, UP_BLOCK, VAEConfig, init_params
    from dit_jax.weights import save_vae_weights
    cfg = VAEConfig(down_block_types=(DOWN_BLOCK,) * 2, up_block_types=(UP_BLOCK,) * 2, block_out_channels=(8, 8),
                    layers_per_block=1, norm_num_groups=4)
    out = str(tmp_path / "vae")
    save_vae_weights(out, init_params(cfg, jax.random.key(0)), cfg)
    return out


def _snapshot(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs + ["."])


def test_dry_run_checks_the_files_and_prints_the_plan_writing_nothing(tmp_path, capsys):
    """The demo data with a VAE-encoding config: every file checked, the plan printed, no file made."""
    vae = _tiny_vae_dir(tmp_path)
    before = _snapshot(tmp_path)
    workdir = str(tmp_path / "runs" / "r1")
    base = ["train", f"--workdir={workdir}", "--dry_run", "--devices=8", "--num_processes=2",
            "--config.batch_size=64", "--config.mesh.fsdp=2"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "mesh data=4 x fsdp=2 x tensor=1 over 8 devices; batch 64 global, 8 per device, 32 per host (2 host(s))" \
        in out, out
    assert "records" in out or "built on the first run" in out
    assert f"workdir {workdir}: made under {tmp_path}: starts at step 0" in out
    assert _snapshot(tmp_path) == before
    assert main(base + ["--config.data.latents=encode", "--config.data.vae=" + vae]) == 0
    assert f"latents 'encode', VAE {vae}" in capsys.readouterr().out
    # Each file check can fail: the message names the field and the fix; exit 2; nothing written.
    failing = {
        "--config.data.vae=" + str(tmp_path / "no_vae"): "data.vae",
        "--config.init_weights=" + str(tmp_path / "no_weights"): "init_weights",
        "--config.batch_size=60": "not divisible by the 8 devices",
        "--devices=7": "does not fit 7 devices",
    }
    for flag, text in failing.items():
        extra = ["--config.data.latents=encode", "--config.data.vae=" + vae] if "vae" in flag else []
        assert main(base + extra + [flag]) == 2, flag
        err = capsys.readouterr().err
        assert text in err, (flag, err)
    assert _snapshot(tmp_path) == before


def test_dry_run_refuses_an_unwritable_workdir(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root may write in a 0500 directory; no one may write in /proc/1
        parent = next((p for p in (str(locked), "/proc/1") if not os.access(p, os.W_OK)), None)
        if parent is None:
            pytest.skip("no directory here refuses this user's writes")
        assert main(["train", f"--workdir={parent}/run", "--dry_run"]) == 2
        assert f"{parent} is not writable" in capsys.readouterr().err
        assert main(["train", f"--workdir={tmp_path}/run", "--dry_run"]) == 0  # the control: a writable parent
    finally:
        locked.chmod(0o700)


def test_dry_run_options_need_the_dry_run(capsys):
    assert main(["train", "--devices=8"]) == 2
    assert "--devices and --check_files apply to a dry run: add --dry_run" in capsys.readouterr().err


def test_dry_run_says_from_which_committed_checkpoint_a_run_resumes(tmp_path, capsys):
    from dit_jax.train.checkpoint import COMMIT_MARKERS
    for step, markers in ((500, COMMIT_MARKERS), (1000, COMMIT_MARKERS), (1500, COMMIT_MARKERS[:1])):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
        for marker in markers:
            (tmp_path / "checkpoints" / str(step) / marker).write_text("")
    assert main(["train", f"--workdir={tmp_path}", "--dry_run"]) == 0
    assert f"workdir {tmp_path}: resumes from step 1,000 (committed checkpoints [500, 1000])" in capsys.readouterr().out


def test_help_texts_say_what_a_user_types(capsys):
    assert main(["train", "--help"]) == 0
    train = capsys.readouterr().out
    assert "--dry_run" in train and "Exit codes: 0 finished, 75 preempted" in train
    assert "absl" not in train and "ml_collections" not in train  # no implementation notes
    assert main(["compile", "--help"]) == 0  # argparse's exit after the help is main's return
    compile_help = " ".join(capsys.readouterr().out.split())
    assert "--config=FILE[:ARG] (default configs/dit.py" in compile_help and "--config.FIELD=VALUE" in compile_help
