"""MeanFlow (Geng et al. 2025): one-step generation by learning the average velocity, on the DiT
backbone with a second time input. objective.py: the (t, r) draws, training-time guidance, the JVP
target and the adaptively weighted loss; sampler.py: 1-NFE and k-step sampling."""

from dit_jax.meanflow.objective import GUIDANCE, TIME_DISTS, MeanFlow, draw, from_config, loss_terms
from dit_jax.meanflow.sampler import sample, schedule, solver_step
