"""Will it fit? The real sharded train step compiled ahead of time for a TPU topology, from a CPU host.

    dit-jax compile --config configs/dit.py:XL/2 --topology v5p-8 --config.data.latents=dataset

libtpu describes the target's chips without having them (`jax.experimental.topologies`); XLA's TPU
compiler then reports what one device would hold: arguments (the state and the batch shard),
temporaries, output, and the FLOPs of the step. A step that does not fit is compiled again with
the settings that usually make it fit (remat, a larger fsdp, unrolled blocks) until one does.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from dataclasses import dataclass

import flax.linen as nn
import jax

from dit_jax.parallel.mesh import describe as describe_mesh, make_mesh_from_config
from dit_jax.parallel.sharding import LOGICAL_RULES, batch_divisor
from dit_jax.train.programs import build_train_step
from dit_jax.run import abstract_vae, make_run

GIB = 2 ** 30
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}   # per chip (one JAX device)
CHIP_CONFIG = {"v4": "megacore", "v5p": "megacore", "v5e": "default", "v6e": "default"}
INSTALL = "pip install 'dit-jax[tpu]' (libtpu; or pip install 'jax[tpu]')"


@dataclass(frozen=True)
class Target:
    name: str          # as Cloud TPU names it: v5p-256 counts TensorCores (2 per v4/v5p chip), v5e-8 chips
    generation: str
    dims: tuple        # chips along the torus axes of one slice
    num_slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.dims)

    @property
    def topology(self) -> str:
        return f"{self.generation}:{'x'.join(map(str, self.dims))}"

    @property
    def hbm_gib(self) -> float:
        return HBM_GIB[self.generation]


def parse_topology(name: str, num_slices: int = 1) -> Target:
    """'v5p-256' -> 128 chips as 4x4x8; 'v5e-8' -> 8 chips as 2x4 (the shapes Cloud TPU gives)."""
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
    usage = "use v4-N or v5p-N (N = 2 x chips, N >= 8) or v5e-N / v6e-N (N = chips), e.g. v5p-256"
    if not m:
        raise ValueError(f"unknown topology {name!r}: {usage}")
    generation, n = m.group(1), int(m.group(2))
    three_d = generation in ("v4", "v5p")
    chips = n // 2 if three_d else n
    dims = [2, 2, 1] if three_d else [2, 2]
    if chips == 1 and not three_d:
        dims = [1, 1]
    while math.prod(dims) < chips:  # grow as the slices do: double the smallest axis, the last of equals
        smallest = min(dims)
        i = len(dims) - 1 - dims[::-1].index(smallest)
        dims[i] *= 2
    if math.prod(dims) != chips:
        raise ValueError(f"topology {name!r} is not a slice Cloud TPU offers: {usage} with a power-of-two size")
    if num_slices < 1:
        raise ValueError(f"--num-slices must be >= 1, got {num_slices}")
    return Target(name, generation, tuple(dims), num_slices)


def target_devices(target: Target):
    """Compile-only devices of the target (all slices), described by libtpu on this host."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ValueError(f"compiling for a TPU topology needs libtpu on this host: {INSTALL}") from None
    from jax.experimental import topologies
    # Describing chips opens no device; another process on this host that holds libtpu (a run,
    # another check) must not block it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    bounds = (1, 1, 1) if target.chips == 1 else (2, 2, 1)
    return topologies.get_topology_desc(platform="tpu", topology_name=target.topology,
                                        chip_config_name=CHIP_CONFIG[target.generation],
                                        chips_per_host_bounds=bounds, num_slices=target.num_slices).devices


def compile_run(config, devices):
    """The run of `config` on `devices`, with the VAE as shapes when the step encodes (no weights needed)."""
    mesh = make_mesh_from_config(config.mesh, devices)
    if config.batch_size % batch_divisor(mesh):
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {batch_divisor(mesh)} devices that "
                         f"split the batch (mesh {dict(mesh.shape)})")
    vae = abstract_vae(mesh) if config.data.latents == "encode" else None
    from dit_jax.train.repa import attach
    return attach(make_run(config, vae=vae, mesh=mesh), "abstract")


def compile_step(config, devices) -> dict:
    """Compile the training run's step for `devices`; per-device memory (bytes), FLOPs and seconds."""
    run = compile_run(config, devices)
    program = build_train_step(run)
    mesh, notes = run.mesh, program.notes
    start = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        compiled = program.lower(run).compile()
    seconds = time.time() - start
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    figures = {"arguments": mem.argument_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
               "output": mem.output_size_in_bytes, "aliased": mem.alias_size_in_bytes,
               "code": mem.generated_code_size_in_bytes}
    # Donated state: the output reuses the arguments' buffers (aliased), counted once.
    figures["peak"] = (figures["arguments"] + figures["output"] - figures["aliased"] + figures["temporaries"]
                       + figures["code"])
    return {"memory": figures, "flops": float((cost or {}).get("flops", 0.0)), "seconds": seconds,
            "mesh": mesh, "notes": notes, "collectives": collectives(compiled.as_text())}


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")  # the op after the result's shape


def collectives(hlo_text: str) -> dict[str, int]:
    """How many of each collective the compiled program holds (async `-start` halves counted once):
    whether FSDP became all-gather / reduce-scatter, as it should, or full all-reduces."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for match in _OP.finditer(hlo_text):
        counts[match.group(1)] += 1
    return counts


def _setting(config) -> str:
    m = config.model
    return (f"mesh data={config.mesh.data} fsdp={config.mesh.fsdp} tensor={config.mesh.tensor}, "
            f"remat={m.remat}, scan_blocks={m.scan_blocks}")


def alternatives(config, devices_per_slice: int):
    """Settings that lower memory per device, cheapest first: remat, FSDP of 2-16 (the sizes that
    compiled to all-gather/reduce-scatter rather than all-reduces), unrolled blocks."""
    fsdp0, remat0 = config.mesh.fsdp, config.model.remat
    larger = [f for f in (2, 4, 8, 16) if f > fsdp0 and devices_per_slice % (f * config.mesh.tensor) == 0]
    # remat is a policy name; booleans are the older spelling of "full" / "none"
    rematted = remat0 not in ("none", False)
    settings = ([] if rematted else [("full", fsdp0)]) + [(remat0, f) for f in larger]
    settings += [] if rematted else [("full", f) for f in larger]
    out = []
    for remat, fsdp in settings:
        c = copy.deepcopy(config)
        c.model.remat = remat
        if fsdp != fsdp0:
            c.mesh.fsdp, c.mesh.data = fsdp, -1
        out.append(c)
    if config.model.scan_blocks:
        c = copy.deepcopy(config)
        c.model.scan_blocks = False
        out.append(c)
    return out


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:.2f} MiB"


def report(result: dict, hbm_gib: float) -> list[str]:
    m = result["memory"]
    verdict = "fits" if m["peak"] <= hbm_gib * GIB else "does not fit"
    return [f"compiled in {result['seconds']:.1f} s",
            f"per device: arguments {_size(m['arguments'])}, temporaries {_size(m['temporaries'])}, "
            f"output {_size(m['output'])} ({_size(m['aliased'])} aliased to donated arguments), "
            f"peak {_size(m['peak'])}",
            f"FLOPs per device per step: {result['flops'] / 1e9:.4g} GFLOP",
            "collectives: " + ", ".join(f"{n} {name}" for name, n in result.get("collectives", {}).items() if n),
            f"verdict: {verdict} ({_size(m['peak'])} of {hbm_gib:g} GiB HBM per chip)"]


def check_fit(config, topology: str, num_slices: int = 1, hbm_gib: float = 0.0, max_tries: int = 4) -> int:
    """Compile `config`'s step for the TPU slice `topology` and print what one chip holds; 0 if it fits,
    else 1 after trying up to `max_tries` other settings (printing the one that fits, if any)."""
    target = parse_topology(topology, num_slices)
    devices = target_devices(target)
    hbm = hbm_gib or target.hbm_gib
    per_slice = len(devices) // target.num_slices
    print(f"target {target.name} x {target.num_slices} slice(s): {len(devices)} chips ({devices[0].device_kind}, "
          f"{target.topology} per slice), HBM {hbm:g} GiB per chip")
    print(f"model {config.model.name}, global batch {config.batch_size} "
          f"({config.batch_size / len(devices):g} per chip), input {config.data.latents or 'pixels'!r}, "
          f"{_setting(config)}")
    result = compile_step(config, devices)
    print(f"mesh {dict(result['mesh'].shape)}; {describe_mesh(result['mesh'], config.mesh)}")
    for line in result["notes"]:
        print(line)
    if config.model.scan_blocks:
        print("note: with model.scan_blocks the FLOPs count the scanned block once; unroll for the full count")
    lines = report(result, hbm)
    print("\n".join(lines))
    if result["memory"]["peak"] <= hbm * GIB:
        return 0
    for candidate in alternatives(config, per_slice)[:max_tries]:
        try:
            tried = compile_step(candidate, devices)
        except ValueError as e:  # e.g. an fsdp size the model's dimensions do not divide
            print(f"try {_setting(candidate)}: {e}")
            continue
        peak = tried["memory"]["peak"]
        print(f"try {_setting(candidate)}: peak {_size(peak)} ({tried['seconds']:.1f} s)")
        if peak <= hbm * GIB:
            print(f"fits with: {_setting(candidate)} (--config.model.remat={candidate.model.remat} "
                  f"--config.mesh.fsdp={candidate.mesh.fsdp} --config.model.scan_blocks={candidate.model.scan_blocks})")
            return 1
    print("no setting tried fits: lower the batch per chip or use a larger slice")
    return 1
