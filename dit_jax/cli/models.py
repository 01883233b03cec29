"""`dit-jax models`: parameter counts and forward MACs of the named models (the paper's Table 4)."""

from __future__ import annotations

from dit_jax.argparsing import count

NAME = "models"
HELP = "parameter counts and forward MACs of the named models"


def add_arguments(m) -> None:
    m.add_argument("--input-size", type=count(1), help="latent side (32 = 256 px, 64 = 512 px)")


def run(args) -> int:
    from dit_jax.models.dit import MODEL_NAMES, dit_config, forward_macs, param_count
    print(f"{'model':<10} {'input':>5} {'params':>13} {'ref. params*':>13} {'fwd GMACs':>10}")
    for name in MODEL_NAMES:
        cfg = dit_config(name, input_size=args.input_size or 32)
        n = param_count(cfg)
        print(f"{name:<10} {cfg.input_size:>5} {n:>13,} {n + cfg.num_tokens * cfg.hidden_size:>13,} "
              f"{forward_macs(cfg) / 1e9:>10.2f}")
    print("* the PyTorch reference counts its frozen sin-cos position table as a parameter; here it is a constant")
    return 0
