"""Side-by-side comparisons with the official PyTorch code, one module per reference, on shared parts.

    common.py    rows (max abs and max|ours - ref| / max|ref|), the reference's DiT, identical noise
    training.py  the training comparison written once: our jitted train step beside a reference's
                 update, fed the same batches and draws; a reference plugs in its step (dit.py, sit.py)
    dit.py       DiT (official models.py + diffusion/): forward, loss terms, sampling steps, training
    sit.py       SiT (official models.py + transport/): forward, losses, ODE/SDE steps, dopri5, training
    repa.py      REPA (official models/sit.py, loss.py, samplers.py, train.py) and the DINOv2 encoders it
                 loads through torch.hub: preprocessing, features, forward, SILoss, samplers, training

Used by tools/compare_torch.py and the parity tests (the PyTorch statements in tests/ standing in).
"""

# The shared parts under the package's name, as `dit_jax.parity` offered them when it was one module.
from dit_jax.parity.common import (Row, compare, fixed_randn_like, format_table, nchw, nhwc,  # noqa: E402,F401
                                   randomize_zero_layers, reference_and_ours, torch_model)
