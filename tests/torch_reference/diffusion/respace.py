"""Timestep respacing (statement of DiT's diffusion/respace.py)."""

import numpy as np
import torch as th

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps, section_counts):
    """Set of original timesteps to keep.

    section_counts: list of ints or comma-separated string (one count per equal section of the
    original steps, picked by accumulating a fractional stride and rounding with Python's round),
    or "ddimN": the integer stride that gives exactly N steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {want} steps with an integer stride")
        section_counts = [int(s) for s in section_counts.split(",")]

    size_per, extra = divmod(num_timesteps, len(section_counts))
    start_idx = 0
    steps = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur_idx = 0.0
        for _ in range(count):
            steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride  # accumulate, then round (not round(i * stride))
        start_idx += size
    return set(steps)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion over a subset of the base process's timesteps.

    betas_i = 1 - abar[t_i] / abar[t_{i-1}]; the model is wrapped so that it sees original timesteps.
    """

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.timestep_map = []
        self.original_num_steps = len(kwargs["betas"])

        base = GaussianDiffusion(**kwargs)
        last_abar = 1.0
        new_betas = []
        for i, abar in enumerate(base.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - abar / last_abar)
                last_abar = abar
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.original_num_steps)

    def _scale_timesteps(self, t):
        return t  # the wrapped model does the mapping


class _WrappedModel:
    """Calls model(x, timestep_map[ts], **kwargs)."""

    def __init__(self, model, timestep_map, original_num_steps):
        self.model = model
        self.timestep_map = timestep_map
        self.original_num_steps = original_num_steps

    def __call__(self, x, ts, **kwargs):
        table = th.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        return self.model(x, table[ts], **kwargs)
