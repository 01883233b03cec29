"""SiT's flow-matching objective (stochastic interpolants) on the DiT backbone.

paths.py: the Linear, GVP and VP interpolation paths; transport.py: the `Transport` configuration,
the training loss and the sampling field; samplers.py: the ODE (euler, heun, dopri5) and SDE
(euler, heun) samplers; guidance.py: classifier-free guidance as SiT applies it.
"""

from dit_jax.transport.guidance import forward_with_cfg, guided_model_fn, sit_model_fn, split_learned_sigma
from dit_jax.transport.paths import DIFFUSION_FORMS, GVP, PATHS, VP, Linear, make_path
from dit_jax.transport.integrators import (LAST_STEPS, ODE_METHODS, SDE_METHODS, model_evaluations, sample, sample_ode,
                                        sample_sde)
from dit_jax.transport.transport import (LOSS_WEIGHTS, PREDICTIONS, Transport, score_fn, training_losses,
                                         velocity_fn)
