"""Pallas splash attention (TPU) for DiT's full, non-causal self-attention, in the model's layout.

`splash_attention(q, k, v)` takes and returns (B, T, N, H) like `jax.nn.dot_product_attention`, and
computes softmax(q k^T / sqrt(H)) v with the TPU kernel where the program is lowered for a TPU and
with XLA attention elsewhere. The choice is made by `jax.lax.platform_dependent` when lowering, not
from the host's backend: `dit-jax compile` traces on a CPU host and lowers for TPU chips.

What the kernel needs and how it is met:
- it takes one example, (N, T, H), and does not scale q: we scale q by 1/sqrt(H) (as XLA attention
  does to the logits) and vmap over the batch;
- block sizes must be multiples of 128 that divide the sequence: DiT's 256 tokens (256 px, /2)
  run in one 256 block, 1024 tokens (512 px) in 512 blocks. A sequence that is not a multiple of
  128 (tiny test models) is padded with zeros, and segment ids keep real queries off padded keys;
- head dims 72 (XL, 1152 / 16) and 64 are taken as they are: the kernel's blocks span the whole head
  dim, which Mosaic accepts below 128 lanes (the TPU compile test shows it), so no padding there;
- a Pallas call is not partitioned by XLA's SPMD partitioner (it would gather the whole batch on
  every chip), so under a mesh it runs in `shard_map`, per device on its share of batch and heads.
"""

from __future__ import annotations

import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

LANES = 128            # the kernel's block sizes are multiples of the TPU's 128 lanes
MAX_BLOCK = 512        # larger blocks use more VMEM for little gain at DiT's lengths


def padded_length(seq_len: int) -> int:
    return -(-seq_len // LANES) * LANES


def block_sizes(seq_len: int) -> splash.BlockSizes:
    """One block size for every pass: the (padded) sequence if it is at most 512, else 512 or 256."""
    padded = padded_length(seq_len)
    block = next(b for b in (MAX_BLOCK, 256, LANES) if b <= padded and padded % b == 0)
    return splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                             block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                             block_q_dq=block, block_kv_dq=block)


def _kernel(seq_len: int, num_heads: int, interpret: bool):
    """The kernel for one example of `num_heads` heads over a (padded) sequence; full mask.

    Made anew in each trace, not cached: the kernel holds its mask info as arrays made with jnp.array,
    which under a trace are that trace's values, and a cached kernel would leak them into the next trace
    (an UnexpectedTracerError). Making it costs 0.2 ms at T=256, 2.4 ms at T=1024 (16 heads, CPU)."""
    padded = padded_length(seq_len)
    mask = splash.MultiHeadMask([splash.FullMask((padded, padded))] * num_heads)
    return splash.make_splash_mha(mask, block_sizes=block_sizes(seq_len), head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def splash_local(q: jax.Array, k: jax.Array, v: jax.Array, interpret: bool = False) -> jax.Array:
    """The kernel on arrays of one device, (B, T, N, H) -> (B, T, N, H). `interpret` runs it on CPU."""
    _, seq_len, num_heads, head_dim = q.shape
    padded = padded_length(seq_len)
    kernel = _kernel(seq_len, num_heads, interpret)
    q = q * jnp.asarray(1.0 / math.sqrt(head_dim), q.dtype)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # (B, N, T, H)
    if padded == seq_len:
        out = jax.vmap(kernel)(q, k, v)
    else:
        pad = ((0, 0), (0, 0), (0, padded - seq_len), (0, 0))
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
        # Padded positions get their own segment: real queries never see padded keys.
        ids = (jnp.arange(padded) >= seq_len).astype(jnp.int32)
        segments = splash.SegmentIds(q=ids, kv=ids)
        out = jax.vmap(lambda a, b, c: kernel(a, b, c, segment_ids=segments))(q, k, v)[:, :, :seq_len]
    return jnp.swapaxes(out, 1, 2)


def _sharded(fn, ndim: int = 4):
    """`fn` per device under the mesh in scope (batch and heads as the logical rules split them)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn
    spec = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
    spec = jax.sharding.PartitionSpec(*(list(spec) + [None] * (ndim - len(spec))))
    return jax.shard_map(fn, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)


def _xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v)


@functools.cache
def _log_fallback(backend: str) -> None:
    logging.getLogger(__name__).warning(
        "attention='splash' on the %s backend: using XLA attention (Pallas splash attention needs a TPU; "
        "a program lowered for TPUs still gets it)", backend)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Full self-attention, (B, T, N, H) in and out: splash on TPUs, XLA attention elsewhere."""
    if jax.default_backend() != "tpu":
        _log_fallback(jax.default_backend())
    tpu = _sharded(splash_local)
    return jax.lax.platform_dependent(q, k, v, tpu=tpu, default=_xla)
