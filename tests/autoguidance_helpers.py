"""The autoguidance tests' guide model and guided .npz, shared with their 8-device child process."""

import dataclasses

import jax
import numpy as np

from dit_jax.models.dit import init_params
from dit_jax.run import config_for_model
from dit_jax.sampling.run_sampler import SamplerSettings
from helpers import TINY, tiny_params

# A smaller guide of the same kind: other patch size, width and heads, no learned sigma.
GUIDE = dataclasses.replace(TINY, patch_size=2, hidden_size=16, num_heads=1, learn_sigma=False)


def guide_params():
    p = init_params(GUIDE, jax.random.key(5))
    return jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(6), a.shape), p)


def guided_npz(out, batch_per_device):
    from dit_jax.parallel.mesh import make_mesh
    from dit_jax.sampling.npz import sample_npz
    from dit_jax.sampling.run_sampler import build_sampler
    from dit_jax.run import make_run
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    by_batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    run = make_run(config_for_model(TINY), vae=None, mesh=make_mesh(devices=jax.devices()))
    sampler = build_sampler(run, SamplerSettings(steps="4", cfg_scale=2.0), sharding=by_batch, uint8=True,
                            guide=GUIDE)
    sample_npz(sampler, tiny_params(), 10, 5, 7, out, batch_per_device=batch_per_device, log=lambda s: None,
               guide_params=guide_params())
