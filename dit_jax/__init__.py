"""dit-jax: DiT (Scalable Diffusion Models with Transformers) in JAX/Flax.

Public API for people comparing with PyTorch:

    import dit_jax
    model = dit_jax.create_model("DiT-XL/2")                   # Flax module; model.config
    params, config = dit_jax.from_torch(state_dict)             # official names, numpy/tensors
    state_dict = dit_jax.to_torch(params, config)               # back, exact
    diffusion = dit_jax.create_diffusion("250")                 # as the reference's create_diffusion
"""

from dit_jax.diffusion.gaussian import GaussianDiffusion, create_diffusion
from dit_jax.models.dit import MODEL_NAMES, DiT, DiTConfig, dit_config, init_params

__version__ = "0.1.0"

_CONVERTERS = ("from_diffusers", "from_torch", "infer_config", "to_torch")


def __getattr__(name: str):
    # The converters load on first use, so that training and sampling never import them.
    if name in _CONVERTERS:
        from dit_jax.convert import dit_torch
        return getattr(dit_torch, name)
    raise AttributeError(f"module 'dit_jax' has no attribute {name!r}")


def create_model(name: str, **overrides) -> DiT:
    """The DiT module for a named config ('DiT-XL/2', ...), fields overridable (input_size=64)."""
    return DiT(dit_config(name, **overrides))


__all__ = ["DiT", "DiTConfig", "GaussianDiffusion", "MODEL_NAMES", "create_diffusion", "create_model",
           "dit_config", "from_diffusers", "from_torch", "infer_config", "init_params", "to_torch"]
