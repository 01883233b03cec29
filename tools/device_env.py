#!/usr/bin/env python
"""The Python environment of `tools/device_benchmark.sh`, on both machines.

    python tools/device_env.py wheels DEST        # here: the wheels the accelerator machine lacks, into DEST
    python tools/device_env.py check OUT.json     # there: versions, device, and what the project misses
    python tools/device_env.py fast-solver        # the fast sampler to time, if dit_jax has one

The accelerator machine reaches no package registry. Its image (tools/device_packages.txt) has jax with
its CUDA plugin, flax, optax, orbax, torch..., but not every distribution setup.cfg requires. `wheels`
walks the requirements of the missing ones through this environment's installed metadata, so that each
wheel is the version installed and tested here, and downloads those the image lacks. `check` runs
before any benchmark there: it records the versions and the device, and names, one line each, every
requirement that is missing or too old and every project module that does not import.
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Required by setup.cfg, not by the benchmark: gs:// run directories only (and a large closure of
# Google client libraries the 64 MiB tree would carry for nothing).
NOT_CARRIED = {"gcsfs"}
# The versions the run records (None where not installed).
VERSIONS = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "jax-cuda12-pjrt",
            "flax", "optax", "orbax-checkpoint", "chex", "etils", "tensorstore", "numpy", "ml-dtypes", "protobuf",
            "torch", "triton", "tensorflow-datasets", "grain", "array-record", "ml-collections", "tensorboardX")
# Fast solvers in order of preference; then any other registry name with "dpm" in it (DPM-Solver's
# family), which "ddpm" is not.
FAST_SOLVERS = ("dpm++2m", "dpmpp2m", "dpmpp_2m", "dpm++_2m", "dpm-solver++", "dpmsolver++", "unipc")
# The platforms the machine's Python 3.12 (x86-64, glibc) installs; pip matches manylinux_2_N exactly.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
TREE_LIMIT = 64 * 2**20  # what travels to the machine: the working tree plus carried paths


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements() -> list:
    """setup.cfg's install_requires as packaging Requirements."""
    from packaging.requirements import Requirement
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    lines = cfg["options"]["install_requires"].splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]


def device_packages(path: str = os.path.join(HERE, "device_packages.txt")) -> set[str]:
    with open(path) as f:
        return {canonical(line.strip()) for line in f if line.strip() and not line.startswith("#")}


def target_markers(extra: str = "") -> dict:
    """The marker environment of the machine's Python (3.12, Linux, x86-64), whatever runs this."""
    return dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux", platform_system="Linux",
                platform_machine="x86_64", os_name="posix", implementation_name="cpython",
                platform_python_implementation="CPython", platform_release="", platform_version="",
                implementation_version="3.12.3", extra=extra)


def _applies(req, extras) -> tuple[bool, bool]:
    """(applies at all, applies only because of an extra) for the target machine."""
    if req.marker is None:
        return True, False
    base = req.marker.evaluate(target_markers())
    by_extra = any(req.marker.evaluate(target_markers(e)) for e in extras)
    return base or by_extra, by_extra and not base


def missing_closure(roots, present: set[str]) -> dict[str, str]:
    """{distribution: version installed here} of every distribution the machine lacks that `roots` need.

    Walks Requires-Dist (with extras) of this environment's installed distributions. A distribution the
    machine has is taken as installed with its own requirements; only the requirements an extra adds
    (etils[epath] -> fsspec, zipp, ...) are followed through it."""
    from importlib.metadata import PackageNotFoundError, distribution
    from packaging.requirements import Requirement
    need: dict[str, str] = {}
    walked: dict[str, set] = {}
    work = [(r.name, set(r.extras)) for r in roots]
    while work:
        name, extras = work.pop()
        key = canonical(name)
        if key in walked and extras <= walked[key]:
            continue
        walked[key] = walked.get(key, set()) | extras
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise SystemExit(f"error: {name} is required but not installed in {sys.prefix}: install the project "
                             "here first (pip install -e .[test])") from None
        on_machine = key in present
        if not on_machine:
            need[canonical(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            applies, only_by_extra = _applies(req, walked[key])
            if applies and (only_by_extra or not on_machine):
                work.append((req.name, set(req.extras)))
    return need


def tree_bytes() -> int:
    """Bytes of what the device tool sends: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return sum(os.path.getsize(os.path.join(REPO, p)) for p in out.split("\0") if p and
               os.path.isfile(os.path.join(REPO, p)))


def cmd_wheels(dest: str) -> int:
    roots = [r for r in project_requirements() if canonical(r.name) not in NOT_CARRIED]
    need = missing_closure(roots, device_packages())
    os.makedirs(dest, exist_ok=True)
    pins = [f"{name}=={version}" for name, version in sorted(need.items())]
    print(f"the machine lacks {len(pins)} distributions: {' '.join(pins)}")
    download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                "3.12", "--implementation", "cp", "--dest", dest, "--disable-pip-version-check", "-q"]
    for p in PLATFORMS:
        download += ["--platform", p]
    for pin in pins:
        if subprocess.run(download + [pin], capture_output=True, text=True).returncode == 0:
            continue
        # Some distributions (promise) publish a source archive only: build the wheel here, which is
        # only right for pure Python (py3-none-any); anything else must come as the machine's wheel.
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--disable-pip-version-check",
                                "--wheel-dir", dest, pin], capture_output=True, text=True)
        name, version = pin.split("==")
        built = [f for f in os.listdir(dest) if f.endswith(".whl") and canonical(f.split("-")[0]) == canonical(name)
                 and f.split("-")[1] == version]
        if build.returncode or not built or not built[0].endswith("-none-any.whl"):
            print(f"error: no wheel of {pin} for the machine (CPython 3.12, manylinux x86-64), and none builds as "
                  f"pure Python here:\n{build.stderr[-2000:]}", file=sys.stderr)
            return 1
        print(f"built {built[0]} here (its release has no wheel)")
    # One version of each: two wheels of one distribution stop the whole install there.
    wanted = {(canonical(n), v) for n, v in need.items()}
    wheels = []
    for f in sorted(os.listdir(dest)):
        name, _, rest = f.partition("-")
        version = rest.partition("-")[0]
        if not f.endswith(".whl") or (canonical(name), version) not in wanted:
            os.remove(os.path.join(dest, f))
            print(f"removed {f}: not one of the wheels pinned now")
        else:
            wheels.append(f)
    if len(wheels) != len(wanted):
        print(f"error: {len(wanted)} wheels pinned, {len(wheels)} in {dest}", file=sys.stderr)
        return 1
    whl = sum(os.path.getsize(os.path.join(dest, f)) for f in wheels)
    tree = tree_bytes()
    for f in wheels:
        print(f"  {os.path.getsize(os.path.join(dest, f)) / 2**20:7.2f} MiB  {f}")
    print(f"wheels {whl / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {(whl + tree) / 2**20:.1f} MiB "
          f"(limit {TREE_LIMIT / 2**20:.0f} MiB)")
    if whl + tree > TREE_LIMIT:
        print("error: the tree and the wheels are over the device tool's 64 MiB: drop a wheel or untracked files",
              file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- there: the check


def installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def requirement_problems() -> tuple[list[str], list[str]]:
    """(missing, too old or too new): setup.cfg's requirements, then every requirement of each installed
    distribution setup.cfg reaches (a carried wheel can need a newer protobuf than the image has)."""
    from importlib.metadata import PackageNotFoundError, distribution
    from packaging.requirements import Requirement
    missing, mismatched, seen = [], [], set()
    work = [(r, "dit-jax") for r in project_requirements() if canonical(r.name) not in NOT_CARRIED]
    while work:
        req, by = work.pop()
        have = installed_version(req.name)
        if have is None:
            missing.append(f"{req.name} (needed by {by}: {req}) is not installed: carry its wheel "
                           "(tools/device_benchmark.sh --prepare)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            mismatched.append(f"{req.name} {have} is installed; {by} needs {req}")
        key = canonical(req.name)
        if (key, frozenset(req.extras)) in seen:
            continue
        seen.add((key, frozenset(req.extras)))
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            continue
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or sub.marker.evaluate(dict(extra="")) or any(
                    sub.marker.evaluate(dict(extra=e)) for e in req.extras):
                work.append((sub, f"{dist.metadata['Name']} {dist.version}"))
    return sorted(set(missing)), sorted(set(mismatched))


def import_problems() -> list[str]:
    """Every dit_jax module that fails to import, with its error (jax API moves show up here)."""
    import dit_jax
    problems = []
    for m in pkgutil.walk_packages(dit_jax.__path__, "dit_jax."):
        try:
            importlib.import_module(m.name)
        except Exception as e:  # noqa: BLE001 -- each failure is a line of the report
            problems.append(f"{m.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return problems


def nvidia_smi() -> dict:
    if not shutil.which("nvidia-smi"):
        return {}
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True)
    first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    parts = [p.strip() for p in first.split(",")]
    return dict(zip(("gpu", "driver", "gpu_memory"), parts)) if len(parts) == 3 else {}


def cmd_check(out: str, expect: str) -> int:
    """Write OUT (versions, device, date, problems); exit 1 if the benchmark cannot run here."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # this process only looks at the device
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               python=sys.version.split()[0], versions={n: installed_version(n) for n in VERSIONS}, **nvidia_smi())
    missing, mismatched = requirement_problems()
    fatal = list(missing) + import_problems()
    try:
        import jax
        devices = jax.devices()
        env.update(platform=devices[0].platform, device_kind=devices[0].device_kind, device_count=len(devices))
        if expect and devices[0].platform != expect:
            fatal.append(f"jax {jax.__version__} sees {devices[0].platform} devices, not {expect}: is the CUDA "
                         f"plugin for this jaxlib installed? (jax-cuda13-plugin {env['versions']['jax-cuda13-plugin']})")
    except Exception as e:  # noqa: BLE001
        fatal.append(f"jax.devices(): {type(e).__name__}: {e}")
    try:
        env["fast_solver"] = fast_solver()
    except Exception as e:  # noqa: BLE001 -- reported by import_problems already
        env["fast_solver"] = ""
        fatal.append(f"the sampler registry: {type(e).__name__}: {e}")
    env.update(problems=fatal, warnings=mismatched)
    with open(out, "w") as f:
        json.dump(env, f, indent=2)
    v = env["versions"]
    print(f"{env['date']}: {env.get('gpu') or env.get('device_kind', '?')}, jax {v['jax']} (jaxlib {v['jaxlib']}, "
          f"cuda plugin {v['jax-cuda13-plugin'] or v['jax-cuda12-plugin']}), flax {v['flax']}, torch {v['torch']}")
    for line in mismatched:
        print(f"warning: {line}")
    for line in fatal:
        print(f"missing: {line}")
    return 1 if fatal else 0


def fast_solver() -> str:
    """The fast solver the sampler registry lists ("" if none), looked up where the run happens."""
    from dit_jax.sampling.run_sampler import DDPM_SAMPLERS
    names = list(DDPM_SAMPLERS)
    found = [n for n in FAST_SOLVERS if n in names] + [n for n in names if "dpm" in n.lower() and n != "ddpm"]
    return found[0] if found else ""


def cmd_fast_solver() -> int:
    print(fast_solver())
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="download the wheels the accelerator machine lacks")
    w.add_argument("dest")
    c = sub.add_parser("check", help="versions, device and problems, as JSON")
    c.add_argument("out")
    c.add_argument("--expect", default="", help="the jax platform the run needs (gpu); empty: any")
    sub.add_parser("fast-solver", help="the fast solver to time, if the sampler registry has one")
    args = p.parse_args(argv)
    if args.cmd == "wheels":
        return cmd_wheels(args.dest)
    if args.cmd == "check":
        return cmd_check(args.out, args.expect)
    return cmd_fast_solver()


if __name__ == "__main__":
    sys.exit(main())
