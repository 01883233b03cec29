"""DiT with adaLN-Zero (Peebles & Xie), NHWC, pure Flax Linen.

    config = dit_config("XL/2")                      # or dit_config("DiT-XL/2", input_size=64)
    model = DiT(config)
    params = model.init(key, x, t, y)["params"]
    out = model.apply({"params": params}, x, t, y)   # (B, H, W, 2C) with learned sigma

Randomness comes only from explicit rng streams: 'params' at init, 'dropout' for label dropout
when train=True. `force_drop` (bool per example) selects the null class as the reference's
classifier-free guidance does.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dit_jax.models.layers import (DiTBlock, LabelEmbedder, Linear, ScanBlock, TimestepEmbedder, ada_ln,
                                   cotangent_barrier, layer_norm, modulate, sincos_2d_pos_embed, swiglu_hidden)
from dit_jax.models.norms import RMSNorm

# depth, hidden size, heads of the paper's four model sizes.
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCHES = (2, 4, 8)
MODEL_NAMES = tuple(f"DiT-{s}/{p}" for s in ("XL", "L", "B", "S") for p in PATCHES)

# Logical axis names used on parameters and activations (the sharding rules map these).
LOGICAL_AXES = ("batch", "length", "embed", "embed_in", "heads", "kv", "qkv", "mlp", "classes",
                "freq", "patch", "patch_h", "patch_w", "in_ch", "layers", "glu")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION = ("xla", "cudnn", "splash")
# What a block's backward pass keeps from its forward pass; the rest is recomputed.
REMAT = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "offload_dots")


def remat_policy(name: str):
    """The jax.checkpoint policy of a REMAT name ("none" means no remat at all).

    full: keep only the block's inputs. dots_saveable: keep every matmul output (attention's too).
    dots_with_no_batch_dims_saveable: keep the weight matmuls, recompute attention. offload_dots: the
    weight matmuls' outputs go to pinned host memory and come back for the backward pass.
    """
    policies = jax.checkpoint_policies
    return {"full": policies.nothing_saveable,
            "dots_saveable": policies.dots_saveable,
            "dots_with_no_batch_dims_saveable": policies.dots_with_no_batch_dims_saveable,
            "offload_dots": policies.offload_dot_with_no_batch_dims("device", "pinned_host")}[name]


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Everything that fixes the model's function (architecture) and how it is computed."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    # LightningDiT's options (hustvl/LightningDiT models/lightningdit.py; docs/lightningdit.md), all off
    # for the DiT. Each changes the parameters or their meaning: a resume refuses a change.
    use_qknorm: bool = False   # normalise q and k per head: LayerNorm (eps 1e-5, affine), RMSNorm with use_rmsnorm
    use_rmsnorm: bool = False  # RMSNorm (eps 1e-6, learned scale) for the blocks' and final norms and the QK-norm
    use_swiglu: bool = False   # SwiGLU FFN of width int(2/3 * int(hidden * mlp_ratio)) instead of the GELU MLP
    use_rope: bool = False     # 2D rotary embedding of q and k (rows, then columns), beside the sin-cos table
    wo_shift: bool = False     # the blocks' adaLN without shifts (4 chunks, not 6); the final layer keeps its shift
    # MeanFlow's u(z, t, h, y): a second timestep embedder ("h_embedder") for the interval h = t - r, its
    # embedding summed with t's and the label's. Off: the plain DiT, its parameters and outputs unchanged.
    second_time_input: bool = False
    # How it is computed (does not change the parameters):
    # Mixed precision: "bfloat16" runs matmuls and attention in bf16 while LayerNorm statistics,
    # softmax, the timestep/label conditioning and the output (so the loss) stay float32.
    dtype: str = "float32"          # compute dtype
    param_dtype: str = "float32"    # keep float32: AdamW moments and the EMA take the params' dtype
    attention: str = "xla"          # "xla", "cudnn" (flash attention on GPUs) or "splash" (Pallas
    #                                 splash attention on TPUs); the last two are XLA on other backends
    scan_blocks: bool = False       # nn.scan over blocks: faster compiles, stacked block params
    remat: str = "none"             # one of REMAT: what the backward pass recomputes

    def __post_init__(self):
        if isinstance(self.remat, bool):  # configs and checkpoints written when remat was on/off
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        problems = []
        if self.input_size % self.patch_size:
            problems.append(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            problems.append(f"hidden_size {self.hidden_size} must be a multiple of 4 (2D sin-cos embedding)")
        if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
            problems.append(f"dtype/param_dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}/{self.param_dtype!r}")
        if self.attention not in ATTENTION:
            problems.append(f"attention must be one of {ATTENTION}, got {self.attention!r}")
        if self.remat not in REMAT:
            problems.append(f"remat must be one of {REMAT}, got {self.remat!r}")
        if self.use_rope and (self.hidden_size // self.num_heads) % 4:
            problems.append(f"use_rope needs a head dimension (hidden_size / num_heads = "
                            f"{self.hidden_size // self.num_heads}) divisible by 4")
        if self.attention == "cudnn" and self.dtype == "float32":
            problems.append("attention='cudnn' needs dtype='bfloat16' or 'float16'")
        if not 0 <= self.class_dropout_prob < 1:
            problems.append(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")
        for field in ("input_size", "patch_size", "in_channels", "depth", "num_heads", "num_classes"):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be >= 1, got {getattr(self, field)}")
        if problems:
            raise ValueError("invalid DiT config: " + "; ".join(problems))

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def null_class(self) -> int:
        return self.num_classes

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the parameters' shapes and meaning (what a checkpoint must match)."""
        keep = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
                "mlp_ratio", "class_dropout_prob", "num_classes", "learn_sigma", "second_time_input") + LIGHTNING_OPTIONS
        return {k: getattr(self, k) for k in keep}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiTConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown DiT config keys {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**d)


def parse_name(name: str) -> tuple[str, int]:
    """'DiT-XL/2', 'XL/2' or 'DiT_XL_2' -> ('XL', 2)."""
    m = re.fullmatch(r"(?:DiT[-_])?(S|B|L|XL)[/_](\d+)", name.strip())
    if not m or int(m.group(2)) not in PATCHES:
        raise ValueError(f"unknown model name {name!r}; expected one of {', '.join(MODEL_NAMES)} "
                         "(or a custom DiTConfig)")
    return m.group(1), int(m.group(2))


def dit_config(name: str, **overrides) -> DiTConfig:
    """The named config ('DiT-XL/2', ...) with any field overridden (input_size=64 for 512 px)."""
    size, patch = parse_name(name)
    depth, hidden, heads = SIZES[size]
    return DiTConfig(**{"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": patch,
                        **overrides})


# The LightningDiT options: DiTConfig fields, DiTBlock fields of the same names.
LIGHTNING_OPTIONS = ("use_qknorm", "use_rmsnorm", "use_swiglu", "use_rope", "wo_shift")


class DiT(nn.Module):
    config: DiTConfig

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, *, train: bool = False,
                 force_drop: jax.Array | None = None, h: jax.Array | None = None, capture_depth: int = 0):
        """x: (B, H, W, C) NHWC, t: (B,) timesteps (0..999), y: (B,) int labels.

        h: (B,) MeanFlow's interval t - r, read only with config.second_time_input; None there means
        h = 0 (the instantaneous velocity, and what init traces).
        capture_depth k > 0 (REPA): also return the tokens (B, N, hidden) right after block k (1-based),
        before any norm, as `(out, tokens)`."""
        cfg = self.config
        interval = h  # the name h is the image height below
        dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        b, h, w, ch = x.shape
        if (h, w, ch) != (cfg.input_size, cfg.input_size, cfg.in_channels):
            raise ValueError(f"DiT expects inputs of shape (B, {cfg.input_size}, {cfg.input_size}, "
                             f"{cfg.in_channels}) NHWC, got {x.shape}")
        p, d = cfg.patch_size, cfg.hidden_size
        gh, gw = h // p, w // p

        # Patch embedding (a stride-p conv, written as a linear map of each flattened patch).
        patches = x.reshape(b, gh, p, gw, p, ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p, p, ch)
        tokens = Linear((d,), ("patch_h", "patch_w", "in_ch", "embed"), n_in_axes=3, name="x_embedder", **kw)(patches)
        tokens = tokens + jnp.asarray(sincos_2d_pos_embed(d, gh), dtype)[None]
        tokens = nn.with_logical_constraint(tokens, ("batch", "length", "embed"))

        # The conditioning is float32 whatever the compute dtype: timesteps up to 999 need more than
        # bf16's 8 bits of mantissa, and at (B, hidden) it costs nothing.
        cond_kw = dict(dtype=jnp.float32, param_dtype=param_dtype)
        c = TimestepEmbedder(d, name="t_embedder", **cond_kw)(t)
        if cfg.second_time_input:  # MeanFlow: t and h unscaled, each through its own embedder
            c = c + TimestepEmbedder(d, name="h_embedder", **cond_kw)(
                jnp.zeros_like(t) if interval is None else interval)
        c = c + LabelEmbedder(cfg.num_classes, d, cfg.class_dropout_prob, name="y_embedder", **cond_kw)(
            y, train, force_drop)
        c = nn.with_logical_constraint(c, ("batch", "embed"))

        block_kwargs = dict(num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, attention=cfg.attention, **kw,
                            **{k: getattr(cfg, k) for k in LIGHTNING_OPTIONS})
        remat = {} if cfg.remat == "none" else dict(policy=remat_policy(cfg.remat))
        captured = None
        if cfg.scan_blocks and capture_depth:
            tokens, captured = _scan_capturing(block_kwargs, remat, cfg.depth, capture_depth, tokens, c)
        elif cfg.scan_blocks:
            body = nn.remat(ScanBlock, prevent_cse=False, **remat) if remat else ScanBlock
            tokens, _ = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                                in_axes=nn.broadcast, length=cfg.depth,
                                metadata_params={nn.PARTITION_NAME: "layers"})(block_kwargs, name="blocks")(tokens, c)
        else:
            block_cls = nn.remat(DiTBlock, **remat) if remat else DiTBlock
            for i in range(cfg.depth):
                # The backward pass materializes the residual stream's cotangent at each block (on
                # CPU; see cotangent_barrier): without it XLA:CPU recomputes it in every later
                # fusion, quadratic in depth. The scan's carry is materialized already.
                tokens = cotangent_barrier(block_cls(**block_kwargs, name=f"blocks_{i}")(tokens, c))
                if i + 1 == capture_depth:
                    captured = tokens

        # Final layer: LN -> adaLN modulate -> zero-initialised linear to p*p*out_channels.
        shift, scale = ada_ln(c, 2, name="final_adaLN", **kw)
        final_norm = RMSNorm("embed", name="final_norm", **kw) if cfg.use_rmsnorm else layer_norm
        out = Linear((p * p * cfg.out_channels,), ("embed", "patch"), kernel_init=nn.initializers.zeros_init(),
                     name="final_linear", **kw)(modulate(final_norm(tokens), shift, scale))
        # Unpatchify in the reference's (h, w, p, q, c) order; float32 out, so the loss and the
        # sampler's arithmetic are float32 whatever the compute dtype.
        out = out.reshape(b, gh, gw, p, p, cfg.out_channels).transpose(0, 1, 3, 2, 4, 5)
        out = out.reshape(b, h, w, cfg.out_channels).astype(jnp.float32)
        return (out, captured) if capture_depth else out


class _CapturingScanBlock(nn.Module):
    """ScanBlock (same parameter path blocks/block/...) whose carry also holds the tokens after block
    `capture` (REPA's projector input); the scanned input is the block index."""

    block_kwargs: dict
    capture: int

    @nn.compact
    def __call__(self, carry, c, i):
        x, kept = carry
        x = DiTBlock(**self.block_kwargs, name="block")(x, c)
        return (x, jnp.where(i + 1 == self.capture, x, kept)), None


def _scan_capturing(block_kwargs, remat: dict, depth: int, capture: int, tokens, c):
    """The scanned blocks with the tokens after block `capture` carried out: one scan, so the stacked
    parameters are those of a plain scan (a REPA checkpoint samples with the plain model); the cost is a
    second residual-stream-sized carry per block."""
    body = nn.remat(_CapturingScanBlock, prevent_cse=False, **remat) if remat else _CapturingScanBlock
    (tokens, kept), _ = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                                in_axes=(nn.broadcast, 0), length=depth,
                                metadata_params={nn.PARTITION_NAME: "layers"})(
        block_kwargs, capture, name="blocks")((tokens, jnp.zeros_like(tokens)), c, jnp.arange(depth))
    return tokens, kept


def init_params(config: DiTConfig, key: jax.Array, batch: int = 1):
    """Parameters (boxed with logical names stripped) for `config`."""
    model = DiT(config)
    x, t, y = example_inputs(config, batch)
    return nn.unbox(model.init({"params": key}, x, t, y)["params"])


def example_inputs(config: DiTConfig, batch: int = 1):
    return (jnp.zeros((batch, config.input_size, config.input_size, config.in_channels), jnp.float32),
            jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32))


def abstract_params(config: DiTConfig, boxed: bool = False):
    """Shapes/dtypes of the parameters without allocating them (jax.eval_shape)."""
    model = DiT(config)
    shapes = jax.eval_shape(lambda k: model.init({"params": k}, *example_inputs(config))["params"],
                            jax.random.key(0))
    return shapes if boxed else nn.unbox(shapes)


@functools.lru_cache(maxsize=64)
def param_count(config: DiTConfig) -> int:
    """Trainable parameters (the fixed position embedding is a constant, not counted). Cached per config:
    tracing an XL model's init takes about a second, and `dit-jax models` asks for twelve."""
    return sum(int(x.size) for x in jax.tree.leaves(abstract_params(config)))


def reference_param_count(config: DiTConfig) -> int:
    """The PyTorch reference's count, which includes its frozen pos_embed parameter."""
    return param_count(config) + config.num_tokens * config.hidden_size


def forward_macs(config: DiTConfig) -> int:
    """Multiply-accumulates of one forward pass for one example (the paper's "Gflops")."""
    d, n, p, c = config.hidden_size, config.num_tokens, config.patch_size, config.in_channels
    mlp = int(d * config.mlp_ratio)
    ffn = 3 * n * d * swiglu_hidden(d, config.mlp_ratio) if config.use_swiglu else 2 * n * d * mlp
    per_block = (n * d * 3 * d          # qkv
                 + 2 * n * n * d        # q k^T and attn v
                 + n * d * d            # output projection
                 + ffn                  # fc1, fc2 (SwiGLU: w12, w3)
                 + (4 if config.wo_shift else 6) * d * d)  # adaLN modulation (per example)
    embed = n * p * p * c * d + 256 * d + d * d
    final = 2 * d * d + n * d * p * p * config.out_channels
    return config.depth * per_block + embed + final
