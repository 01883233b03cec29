"""The device mesh: (data, fsdp, tensor), laid out along the network.

Inside a slice (or on one GPU node) `mesh_utils.create_device_mesh` orders devices along the
ICI torus/ring; across slices (or GPU nodes, or CPU processes) the `dcn_*` factors multiply the
data/fsdp axes with whole slices as the outer, slower (DCN) dimension, so the collectives that
cross DCN are only those of the axis named in the log line.
"""

from __future__ import annotations

import math

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def granules(devices) -> tuple[int, bool]:
    """(number of DCN granules, whether processes stand for slices).

    TPU devices tell their slice; GPUs and CPUs report none or one slice for all, and then each
    process is one granule (one node of a GPU cluster)."""
    slices = {getattr(d, "slice_index", 0) for d in devices}
    if devices[0].platform == "tpu" or len(slices) > 1:
        return len(slices), False
    return len({d.process_index for d in devices}), True


def _fill(shape: list[int], n: int, what: str) -> list[int]:
    """Resolve one -1 in `shape` so that the product is n; explain a mismatch."""
    named = dict(zip(MESH_AXES, shape))
    if shape.count(-1) > 1:
        raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {named}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % known:
            raise ValueError(f"mesh {named} does not fit {n} devices{what}: {n} is not divisible by {known}")
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n or min(shape) < 1:
        raise ValueError(f"mesh {named} needs {math.prod(shape)} devices{what}, there are {n}; "
                         "set mesh.data=-1 to use the rest")
    return shape


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, dcn_data: int = 1, dcn_fsdp: int = 1,
              devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one of data/fsdp/tensor may be -1 (the rest of a slice).

    data/fsdp/tensor are the sizes within one slice; the mesh's data axis is data x dcn_data and
    its fsdp axis fsdp x dcn_fsdp, with slices outermost.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn = [dcn_data, dcn_fsdp, 1]
    if min(dcn) < 1:
        raise ValueError(f"mesh.dcn_data and mesh.dcn_fsdp must be >= 1, got {dcn_data} and {dcn_fsdp}")
    n_slices = math.prod(dcn)
    if n_slices == 1:
        shape = _fill([data, fsdp, tensor], len(devices), "")
        array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    else:
        found, by_process = granules(devices)
        unit = "processes" if by_process else "slices"
        if found != n_slices:
            raise ValueError(f"mesh.dcn_data x mesh.dcn_fsdp = {n_slices} needs {n_slices} {unit}, the devices "
                             f"form {found}; set them so that their product is {found}")
        shape = _fill([data, fsdp, tensor], len(devices) // n_slices, f" per slice ({unit})")
        array = mesh_utils.create_hybrid_device_mesh(shape, dcn, devices, process_is_granule=by_process,
                                                     allow_split_physical_axes=True)
    return Mesh(array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def mesh_shape(mesh_config, n_devices: int) -> dict[str, int]:
    """The (data, fsdp, tensor) sizes config.mesh gives on `n_devices` devices (no devices needed: a
    plan for a slice made elsewhere); a ValueError as make_mesh's when they do not fit."""
    dcn = [mesh_config.get("dcn_data", 1), mesh_config.get("dcn_fsdp", 1)]
    if min(dcn) < 1:
        raise ValueError(f"mesh.dcn_data and mesh.dcn_fsdp must be >= 1, got {dcn[0]} and {dcn[1]}")
    slices = math.prod(dcn)
    if n_devices % slices:
        raise ValueError(f"mesh.dcn_data x mesh.dcn_fsdp = {slices} slices do not divide {n_devices} devices")
    within = _fill([mesh_config.data, mesh_config.fsdp, mesh_config.tensor], n_devices // slices,
                   " per slice" if slices > 1 else "")
    return dict(zip(MESH_AXES, (within[0] * dcn[0], within[1] * dcn[1], within[2])))


def make_mesh_from_config(mesh_config, devices=None) -> Mesh:
    """config.mesh -> Mesh (the sharding options in config.mesh are read elsewhere)."""
    return make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, mesh_config.get("dcn_data", 1),
                     mesh_config.get("dcn_fsdp", 1), devices)


def describe(mesh: Mesh, mesh_config) -> str:
    """Which axis crosses slices (DCN) and how, for the run log."""
    dcn = {"data": mesh_config.get("dcn_data", 1), "fsdp": mesh_config.get("dcn_fsdp", 1)}
    crossing = [f"{axis} ({n} x {mesh.shape[axis] // n})" for axis, n in dcn.items() if n > 1]
    if not crossing:
        return "one slice: no axis crosses DCN"
    return f"{math.prod(dcn.values())} slices: across DCN {', '.join(crossing)}; within a slice the rest"

