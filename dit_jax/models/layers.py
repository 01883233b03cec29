"""Building blocks of DiT: linear layers, embeddings, attention, adaLN.

Every parameter carries logical axis names (see `dit_jax.models.dit.LOGICAL_AXES`) so that a
sharding rules table can map them onto a device mesh; the main activations are constrained with
the same names. Without rules in scope both are no-ops.

Numerics follow the PyTorch reference: PyTorch-style xavier fans on every linear layer, LayerNorm
without affine in float32, tanh-approximate GELU, cos-first timestep sinusoid.

Mixed precision: parameters stay in `param_dtype` (float32); each Linear casts its input and kernel
to `dtype` (bfloat16 on accelerators), so matmuls and attention run in it. LayerNorm statistics and
the attention softmax are always float32 (jax.nn.dot_product_attention keeps bf16 logits' softmax in
float32; cuDNN accumulates in float32).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.models.norms import RMSNorm, make_norm
from dit_jax.models.rope import apply_rope, rope_tables
from dit_jax.models.splash import splash_attention

Dtype = Any
Init = Callable[..., jax.Array]


def torch_linear_init(n_in_axes: int, n_out_axes: int) -> Init:
    """xavier_uniform with PyTorch's fans: all input axes are fan_in, all output axes fan_out.

    A kernel of shape (embed, 3, heads, head_dim) then gets the same bound as PyTorch's
    Linear(embed, 3 * embed), and a patch kernel (p, p, C, D) the same as the reference's
    xavier on the flattened conv weight.
    """
    return nn.initializers.variance_scaling(
        1.0,
        "fan_avg",
        "uniform",
        in_axis=tuple(range(n_in_axes)),
        out_axis=tuple(range(n_in_axes, n_in_axes + n_out_axes)),
    )


class Linear(nn.Module):
    """y = x . W + b, contracting the last `n_in_axes` axes of x with the first axes of W.

    `names` are the logical axis names of the kernel (input axes, then output axes); the bias
    takes the output names.
    """

    features: Sequence[int]
    names: Sequence[str | None]
    n_in_axes: int = 1
    kernel_init: Init | None = None
    bias_init: Init = nn.initializers.zeros_init()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = tuple(self.features)
        in_shape = x.shape[x.ndim - self.n_in_axes:]
        shape = tuple(in_shape) + features
        if len(self.names) != len(shape):
            raise ValueError(f"{self.name}: {len(self.names)} axis names for kernel shape {shape}")
        init = self.kernel_init or torch_linear_init(self.n_in_axes, len(features))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, tuple(self.names)),
                            shape, self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, tuple(self.names[self.n_in_axes:])),
                          features, self.param_dtype)
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel.astype(self.dtype),
            ((tuple(range(x.ndim - self.n_in_axes, x.ndim)), tuple(range(self.n_in_axes))), ((), ())),
        )
        return y + bias.astype(self.dtype)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm without affine parameters, computed in float32 whatever the compute dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array | None, scale: jax.Array) -> jax.Array:
    """adaLN modulation; shift/scale are per example, broadcast over tokens (shift None: scale only)."""
    if shift is None:
        return x * (1 + scale[:, None, :])
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def timestep_sinusoid(t: jax.Array, dim: int = 256, max_period: float = 10000.0,
                      freq_shift: float = 0.0) -> jax.Array:
    """[cos(t f), sin(t f)] with f = exp(-ln(max_period) * arange(half) / (half - freq_shift)).

    The reference uses freq_shift 0; diffusers' DiT uses 1 (divides by half - 1).
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed MAE-style 2D sin-cos table, (grid_size**2, embed_dim) float32, row-major tokens.

    As the reference: the first half of the channels encodes the column (w) index, the second
    half the row index (np.meshgrid(w, h) order), computed in float64 and cast to float32.
    """
    if embed_dim % 4:
        raise ValueError(f"hidden size {embed_dim} must be a multiple of 4 for the 2D sin-cos embedding")
    coords = np.arange(grid_size, dtype=np.float32)
    grid_w, grid_h = np.meshgrid(coords, coords)  # grid_w varies along columns
    emb = np.concatenate([sincos_1d(embed_dim // 2, grid_w), sincos_1d(embed_dim // 2, grid_h)], axis=1)
    return emb.astype(np.float32)


class TimestepEmbedder(nn.Module):
    hidden_size: int
    freq_dim: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        normal = nn.initializers.normal(0.02)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=normal)
        h = Linear((self.hidden_size,), ("freq", "embed"), name="mlp_0", **kw)(timestep_sinusoid(t, self.freq_dim))
        return Linear((self.hidden_size,), ("embed_in", "embed"), name="mlp_2", **kw)(nn.silu(h))


class LabelEmbedder(nn.Module):
    """Class table with an extra "null" row (index num_classes) when dropout_prob > 0.

    Dropout randomness comes only from the 'dropout' rng stream; `force_drop` (bool per example)
    replaces random dropout as in the reference's classifier-free guidance.
    """

    num_classes: int
    hidden_size: int
    dropout_prob: float
    param_dtype: Dtype = jnp.float32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array, train: bool, force_drop: jax.Array | None = None) -> jax.Array:
        has_null = self.dropout_prob > 0
        table = self.param(
            "embedding_table",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("classes", "embed")),
            (self.num_classes + int(has_null), self.hidden_size), self.param_dtype)
        if force_drop is not None or (train and has_null):
            if not has_null:
                raise ValueError("label dropout / guidance needs a null class: set class_dropout_prob > 0")
            if force_drop is None:
                force_drop = jax.random.uniform(self.make_rng("dropout"), labels.shape) < self.dropout_prob
            labels = jnp.where(force_drop, self.num_classes, labels)
        return jnp.take(table, labels, axis=0).astype(self.dtype)


@functools.cache
def _log_cudnn_fallback(backend: str) -> None:
    logging.getLogger(__name__).warning(
        "attention='cudnn' on the %s backend: using XLA attention (cuDNN flash attention needs a GPU)", backend)


def attention_implementation(requested: str) -> str | None:
    """The `jax.nn.dot_product_attention` implementation to trace for the configured one.

    cuDNN attention fails at trace time without a GPU ("cuDNN is not detected"), so a config asking
    for it falls back to XLA elsewhere (logged once): the same config then initialises, converts and
    lowers on a CPU host that prepares a job, and runs cuDNN on the GPUs that train it.
    """
    if requested == "splash":
        raise ValueError("attention='splash' is not a jax.nn.dot_product_attention implementation: "
                         "call dit_jax.models.splash.splash_attention")
    if requested == "cudnn" and jax.default_backend() != "gpu":
        _log_cudnn_fallback(jax.default_backend())
        return None
    return None if requested == "xla" else requested


class Attention(nn.Module):
    num_heads: int
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    qk_norm: str = ""    # LightningDiT's QK-norm over each head's channels: "", "layernorm" or "rmsnorm"
    rope: bool = False   # LightningDiT's 2D RoPE on q and k (after the QK-norm)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        head_dim = dim // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = Linear((3, self.num_heads, head_dim), ("embed", "qkv", "heads", "kv"), name="qkv", **kw)(x)
        qkv = nn.with_logical_constraint(qkv, ("batch", "length", "qkv", "heads", "kv"))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, N, H) each
        # Both change q and k before the kernel call, so every attention implementation gets them.
        if self.qk_norm:
            q = make_norm(self.qk_norm == "rmsnorm", "kv", name="q_norm", **kw)(q)
            k = make_norm(self.qk_norm == "rmsnorm", "kv", name="k_norm", **kw)(k)
        if self.rope:
            cos, sin = rope_tables(head_dim, math.isqrt(q.shape[1]))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.implementation == "splash":
            out = splash_attention(q, k, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, implementation=attention_implementation(self.implementation))
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        return Linear((dim,), ("heads", "kv", "embed"), n_in_axes=2, name="proj", **kw)(out)


class Mlp(nn.Module):
    hidden_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Linear((self.hidden_dim,), ("embed", "mlp"), name="fc1", **kw)(x)
        h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
        return Linear((dim,), ("mlp", "embed"), name="fc2", **kw)(h)


class SwiGLU(nn.Module):
    """LightningDiT's SwiGLU FFN: w3(silu(x W1) * x W2), with W1 and W2 one fused w12 kernel whose
    middle axis picks W1 (0) or W2 (1), so a tensor-parallel split of the hidden axis keeps pairs together."""
    hidden_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Linear((2, self.hidden_dim), ("embed", "glu", "mlp"), name="w12", **kw)(x)
        h = nn.with_logical_constraint(jax.nn.silu(h[..., 0, :]) * h[..., 1, :], ("batch", "length", "mlp"))
        return Linear((x.shape[-1],), ("mlp", "embed"), name="w3", **kw)(h)


def swiglu_hidden(hidden_size: int, mlp_ratio: float) -> int:
    """LightningDiT's SwiGLU width: two thirds of the GELU MLP's, truncated, no rounding to a multiple."""
    return int(2 / 3 * int(hidden_size * mlp_ratio))


def ada_ln(c: jax.Array, n: int, dtype: Dtype, param_dtype: Dtype, name: str = "adaLN") -> list[jax.Array]:
    """SiLU(c) -> zero-initialised Linear(n * hidden), split into n (B, hidden) chunks."""
    hidden = c.shape[-1]
    mod = Linear((n * hidden,), ("embed", "mlp"), kernel_init=nn.initializers.zeros_init(),
                 dtype=dtype, param_dtype=param_dtype, name=name)(nn.silu(c))
    return jnp.split(mod, n, axis=-1)


class DiTBlock(nn.Module):
    num_heads: int
    mlp_ratio: float = 4.0
    attention: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # LightningDiT's options (dit_jax.models.dit.DiTConfig); all off is the DiT block.
    use_qknorm: bool = False
    use_rmsnorm: bool = False
    use_swiglu: bool = False
    use_rope: bool = False
    wo_shift: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.wo_shift:  # no shift in either modulation (the final layer keeps its own)
            scale_msa, gate_msa, scale_mlp, gate_mlp = ada_ln(c, 4, **kw)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada_ln(c, 6, **kw)
        norm1, norm2 = ((RMSNorm("embed", name="norm1", **kw), RMSNorm("embed", name="norm2", **kw))
                        if self.use_rmsnorm else (layer_norm, layer_norm))
        qk_norm = ("rmsnorm" if self.use_rmsnorm else "layernorm") if self.use_qknorm else ""
        h = Attention(self.num_heads, self.attention, qk_norm=qk_norm, rope=self.use_rope, name="attn", **kw)(
            modulate(norm1(x), shift_msa, scale_msa))
        x = x + gate_msa[:, None, :] * h
        hidden = int(x.shape[-1] * self.mlp_ratio)
        ffn = (SwiGLU(swiglu_hidden(x.shape[-1], self.mlp_ratio), name="mlp", **kw) if self.use_swiglu
               else Mlp(hidden, name="mlp", **kw))
        h = ffn(modulate(norm2(x), shift_mlp, scale_mlp))
        x = x + gate_mlp[:, None, :] * h
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _barrier_on_cpu(v: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(v, cpu=jax.lax.optimization_barrier, default=lambda u: u)


@jax.custom_jvp
def cotangent_barrier(x: jax.Array) -> jax.Array:
    """The identity, whose tangent (so the backward pass's cotangent) XLA:CPU computes once, here.

    In the backward pass of an unrolled stack of residual blocks, the cotangent of the residual
    stream at block i is a chain of cheap elementwise ops (the adds of every later block's
    LayerNorm-backward and gate terms) reaching up to the loss. XLA:CPU's fusion duplicates cheap
    producers into every consumer without a size limit, so each block's weight-gradient transposes
    and gate reductions recomputed the whole chain above it: O(depth^2) elementwise work, fusions of
    230 operands, a DiT-S/2 backward 3-4x slower than PyTorch's (a scan over blocks did not have it,
    its carry is materialized). An optimization barrier on the cotangent at each block boundary
    makes XLA materialize it once. The forward pass is untouched (the barrier is on the tangent
    only, so forward-mode jvp works too), the values are the same, and other platforms lower the
    plain identity: their compilers bound fusion themselves.
    """
    return x


@cotangent_barrier.defjvp
def _cotangent_barrier_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return x, _barrier_on_cpu(t)


class ScanBlock(nn.Module):
    """DiTBlock in the (carry, xs) -> (carry, ys) form that nn.scan wants."""

    block_kwargs: dict

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array):
        return DiTBlock(**self.block_kwargs, name="block")(x, c), None
