"""Classifier-free guidance as SiT applies it (dit_jax.transport.guidance): forward_with_cfg against
the PyTorch statement of the official SiT model, and the all-channel mode against numpy.

Both sides evaluate the same fixed network, a small random channel map and tanh of (x, t), on
B=2 latents of 4x4x4 (ours channels-last, the reference's NCHW): tests/transport_helpers.py. Relative
errors are max|ours - reference| / max|reference|; each family has a negative control.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion.ancestral import guidance_channels
from dit_jax.transport import forward_with_cfg, guided_model_fn
from transport_helpers import (B, C, NUM_CLASSES, T_INTERIOR, check, data, fails, from_torch, jax_class_model,
                               to_torch, torch_class_model)
from transport_helpers import report_each_file, sit  # noqa: F401 - the files' fixtures

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")



@pytest.mark.parametrize("mode", ["reference", "all"])
def test_guided_forward(sit, mode):
    """SiT's forward_with_cfg (3 channels) against the reference, and the all-channel mode against numpy;
    guided_model_fn is its first half."""
    x, t = data(15), jnp.asarray(T_INTERIOR)
    y = jnp.asarray([1, 2, NUM_CLASSES, NUM_CLASSES])   # [cond; null]
    xx, tt = jnp.concatenate([x, x]), jnp.concatenate([t, t])
    channels = guidance_channels(mode, C)
    ours = forward_with_cfg(jax_class_model, 1.5, channels)(xx, tt, y)
    out = np.asarray(jax_class_model(jnp.concatenate([x, x]), tt, y))[..., :C]
    if mode == "reference":
        if sit[1] is None:
            pytest.skip("the reference's models.py needs timm; only its transport package is loaded")
        net = sit[1].SiT(lambda a, b_, c: torch_class_model(a, b_, c), in_channels=C)
        want = from_torch(net.forward_with_cfg(to_torch(xx), torch.from_numpy(np.array(tt)),
                                               torch.from_numpy(np.array(y)), 1.5))
    else:
        cond, uncond = out[:B], out[B:]
        guided = uncond + 1.5 * (cond - uncond)
        want = np.concatenate([guided, guided])
    check(f"forward_with_cfg ({mode})", ours, want)
    half = guided_model_fn(jax_class_model, y[:B], NUM_CLASSES, 1.5, channels)(x, t)
    np.testing.assert_array_equal(half, np.asarray(ours)[:B])
    # Negative control: guidance with the halves swapped.
    swapped = forward_with_cfg(jax_class_model, 1.5, channels)(xx, tt, jnp.concatenate([y[B:], y[:B]]))
    assert fails(swapped, want)
