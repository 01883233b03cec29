"""Device mesh and the logical-axis rules that map parameters and activations onto it.

Strategy is data, not code: the mesh shape (data, fsdp, tensor) comes from the config and one
rules table maps every logical axis name. Pure data parallel is fsdp = tensor = 1 (parameters,
optimizer state and EMA replicated); FSDP shards them over 'fsdp' along their 'embed' axis while
the batch is split over data x fsdp.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Order matters: flax gives each mesh axis to the first rule that can take it, so activations
# (batch, length, embed) use data x fsdp for the batch and leave 'embed' unsharded.
LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("length", None), ("kv", None), ("qkv", None), ("classes", None), ("freq", None),
    ("embed_in", None), ("patch", None), ("patch_h", None), ("patch_w", None), ("in_ch", None), ("layers", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 (the rest of the devices)."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {shape}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} does not fit {n} devices: {n} is not "
                             f"divisible by {known}")
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n or min(shape) < 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, there are {n}; "
                         "set mesh.data=-1 to use the rest")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop the sharding of any dimension the mesh axes do not divide (it stays replicated)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def logical_shardings(abstract_boxed, mesh: Mesh, rules=LOGICAL_RULES):
    """NamedShardings for a tree whose leaves may be nn.Partitioned boxes (others replicated)."""
    specs = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    values = nn.unbox(abstract_boxed)
    return jax.tree.map(lambda spec, v: NamedSharding(mesh, _fit(spec, v.shape, mesh)), mesh_specs, values,
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]
