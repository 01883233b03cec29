"""Logical-axis rules that map parameters and activations onto the mesh, and the state's shardings.

Strategy is data, not code: the mesh shape (data, fsdp, tensor) comes from the config and one
rules table maps every logical axis name. Pure data parallel is fsdp = tensor = 1 (parameters,
optimizer state and EMA replicated); FSDP shards them over 'fsdp' along their 'embed' axis while
the batch is split over data x fsdp. `mesh.shard_optimizer` (ZeRO-1) also splits the AdamW moments
and the EMA over 'data', which parameters never are.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Order matters: flax gives each mesh axis to the first rule that can take it, so activations
# (batch, length, embed) use data x fsdp for the batch and leave 'embed' unsharded.
LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("length", None), ("kv", None), ("qkv", None), ("classes", None), ("freq", None),
    ("embed_in", None), ("patch", None), ("patch_h", None), ("patch_w", None), ("in_ch", None), ("layers", None),
    ("glu", None),  # SwiGLU's two halves (its hidden axis is 'mlp')
)


def _names(axes) -> tuple[str, ...]:
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def _entries(spec: P, ndim: int) -> list:
    return list(spec) + [None] * (ndim - len(spec))


def _mesh_specs(abstract_boxed, rules):
    """(mesh PartitionSpec, shape) per leaf, with key paths."""
    specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_boxed), rules)
    values = nn.unbox(abstract_boxed)
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    flat_values, treedef = jax.tree_util.tree_flatten_with_path(values)
    return [(jax.tree_util.keystr(path, simple=True, separator="/"), spec, v.shape)
            for (path, v), spec in zip(flat_values, flat_specs)], treedef


def _unfit(spec: P, shape, mesh_shape) -> list[tuple[int, tuple[str, ...]]]:
    """(dimension, mesh axes) of each sharded dimension that the axes' size does not divide."""
    out = []
    for d, (dim, axes) in enumerate(zip(shape, _entries(spec, len(shape)))):
        names = _names(axes)
        if names and dim % math.prod(mesh_shape[a] for a in names):
            out.append((d, names))
    return out


def _divisible_sizes(leaves, axes: tuple[str, ...], limit: int) -> list[int]:
    """The sizes of `axes` (up to `limit`) that divide every dimension sharded over them."""
    dims = [dim for _, spec, shape in leaves for dim, a in zip(shape, _entries(spec, len(shape)))
            if _names(a) == axes]
    g = math.gcd(*dims) if dims else 1
    return [k for k in range(1, min(g, limit) + 1) if g % k == 0]


def logical_shardings(abstract_boxed, mesh: Mesh, rules=LOGICAL_RULES, allow_replicated: bool = False):
    """(NamedShardings, notes) for a tree whose leaves may be nn.Partitioned boxes (others replicated).

    A dimension that its mesh axes do not divide is refused, since replicating it silently turns
    e.g. FSDP into plain data parallel; with allow_replicated it stays replicated and `notes` names it.
    """
    leaves, treedef = _mesh_specs(abstract_boxed, rules)
    mesh_shape = dict(mesh.shape)
    notes, problems, out = [], {}, []
    for path, spec, shape in leaves:
        entries = _entries(spec, len(shape))
        for d, names in _unfit(spec, shape, mesh_shape):
            size = math.prod(mesh_shape[a] for a in names)
            problems.setdefault(names, f"{path} dimension {d} ({shape[d]}) is not divisible by "
                                       f"{' x '.join(names)} = {size}")
            notes.append(f"replicated (not divisible by {' x '.join(names)} = {size}): {path} {tuple(shape)}")
            entries[d] = None
        out.append(NamedSharding(mesh, P(*entries)))
    if problems and not allow_replicated:
        hints = [f"{msg}; {' x '.join(names)} sizes that divide every dimension sharded over it: "
                 f"{', '.join(map(str, _divisible_sizes(leaves, names, mesh.size)))}"
                 for names, msg in problems.items()]
        raise ValueError("sharding: " + "; ".join(hints) + " (or set mesh.allow_replicated=True to keep such "
                         "parameters replicated, each logged)")
    return jax.tree.unflatten(treedef, out), notes


def _over_data(sharding: NamedSharding, shape) -> NamedSharding:
    """Also split the first dimension that can take it over 'data' (ZeRO-1); else unchanged."""
    mesh = sharding.mesh
    entries = _entries(sharding.spec, len(shape))
    if mesh.shape["data"] == 1 or any("data" in _names(a) for a in entries):
        return sharding
    for d, (dim, axes) in enumerate(zip(shape, entries)):
        names = _names(axes)
        if dim % (math.prod(mesh.shape[a] for a in names) * mesh.shape["data"]) == 0:
            entries[d] = ("data",) + names
            return NamedSharding(mesh, P(*entries))
    return sharding


def state_shardings(abstract_state, mesh: Mesh, mesh_config, rules=LOGICAL_RULES):
    """(shardings of the TrainState, log lines) as config.mesh asks.

    Parameters follow the rules; with mesh.shard_optimizer the AdamW moments and the EMA are also
    split over 'data', so each data-parallel replica updates only its part of them (XLA gathers
    what the replicated parameters need).
    """
    shardings, notes = logical_shardings(abstract_state.params, mesh, rules,
                                         mesh_config.get("allow_replicated", False))
    full, _ = logical_shardings(abstract_state, mesh, rules, allow_replicated=True)
    lines = [f"mesh.allow_replicated: {n}" for n in notes]
    if mesh_config.get("shard_optimizer", False):
        values = nn.unbox(abstract_state)
        opt = jax.tree.map(lambda s, v: _over_data(s, v.shape), full.opt_state, values.opt_state)
        ema = jax.tree.map(lambda s, v: _over_data(s, v.shape), full.ema_params, values.ema_params)
        full = full.replace(opt_state=opt, ema_params=ema)
        split = [s for s in jax.tree.leaves((opt, ema)) if any("data" in _names(a) for a in s.spec)]
        lines.append(f"mesh.shard_optimizer: {len(split)} of {len(jax.tree.leaves((opt, ema)))} AdamW/EMA arrays "
                     f"split over data ({mesh.shape['data']}); parameters replicated over data")
    return full, lines


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]
