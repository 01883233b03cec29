"""SiT's `Transport` and its training loss (dit_jax.transport.transport) against the PyTorch statement
of the official transport package: the time intervals and eps defaults, the refused choices, and the
training loss for every path x prediction x loss weight with the same x0, x1 and t.

Both sides evaluate the same fixed network, a small random channel map and tanh of (x, t), on
B=2 latents of 4x4x4 (ours channels-last, the reference's NCHW): tests/transport_helpers.py. Relative
errors are max|ours - reference| / max|reference|; each family has a negative control.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.transport import (LOSS_WEIGHTS, Transport, sample_ode, sample_sde, split_learned_sigma,
                               training_losses)
from dit_jax.transport.transport import sample_time_and_noise
from transport_helpers import (B, COMBOS, check, data, fails, from_torch, jax_model, ref_transport, to_torch,
                               torch_model)
from transport_helpers import report_each_file, sit  # noqa: F401 - the files' fixtures

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")



# ---------------------------------------------------------------------------------------------
# Transport configuration: time intervals and eps defaults.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,prediction", COMBOS)
def test_time_interval_matches_check_interval(sit, path, prediction):
    for train_eps, sample_eps in ((None, None), (2e-3, 5e-3)):
        ours = Transport(path, prediction, train_eps=train_eps, sample_eps=sample_eps)
        ref = ref_transport(sit, ours)
        assert ours.eps(True) == ref.train_eps and ours.eps(False) == ref.sample_eps
        assert ours.time_interval(True) == pytest.approx(ref.check_interval(ref.train_eps, ref.sample_eps))
        for form in ("SBDM", "sigma"):
            for size in (0.0, 0.04):
                for reverse in (False, True):
                    for sde in (False, True):
                        kw = dict(sde=sde, diffusion_form=form, last_step_size=size, reverse=reverse)
                        assert ours.time_interval(False, **kw) == pytest.approx(
                            ref.check_interval(ref.train_eps, ref.sample_eps, eval=True, **kw)), kw


def test_transport_rejects_bad_choices():
    for kwargs, word in ((dict(path="linear"), "'linear'"), (dict(prediction="eps"), "'eps'"),
                         (dict(loss_weight="none"), "'none'"), (dict(train_eps=0.7), "0.7")):
        with pytest.raises(ValueError, match=word):
            Transport(**kwargs)
    with pytest.raises(ValueError, match="Linear"):
        Transport(path="bad")
    with pytest.raises(ValueError, match="'Midpoint'"):
        sample_ode(Transport(), jax_model, data(), method="Midpoint")
    with pytest.raises(ValueError, match="'quadratic'"):
        sample_sde(Transport(), jax_model, data(), jax.random.key(0), diffusion_form="quadratic")
    with pytest.raises(ValueError, match="'mean'"):
        sample_sde(Transport(), jax_model, data(), jax.random.key(0), last_step="mean")
    with pytest.raises(ValueError, match="channels"):
        split_learned_sigma(jnp.zeros((1, 2, 2, 6)), 4)


# ---------------------------------------------------------------------------------------------
# Training loss.
# ---------------------------------------------------------------------------------------------

def reference_loss(sit, transport, x1, seed):
    """The reference's loss on its own draw, and that draw (x0 first, then t: its order)."""
    ref = ref_transport(sit, transport)
    x1t = to_torch(x1)
    torch.manual_seed(seed)
    x0 = torch.randn_like(x1t)
    t0, t1 = ref.check_interval(ref.train_eps, ref.sample_eps)
    t = torch.rand((B,)) * (t1 - t0) + t0
    torch.manual_seed(seed)
    terms = ref.training_losses(torch_model, x1t)
    return terms, jnp.asarray(t.numpy()), jnp.asarray(from_torch(x0))


@pytest.mark.parametrize("loss_weight", LOSS_WEIGHTS)
@pytest.mark.parametrize("path,prediction", COMBOS)
def test_training_loss_matches_reference(sit, path, prediction, loss_weight):
    transport = Transport(path, prediction, loss_weight)
    x1 = data(3)
    terms, t, x0 = reference_loss(sit, transport, x1, seed=7)
    ours = training_losses(transport, jax_model, x1, t=t, x0=x0)
    name = f"loss {path}/{prediction}/{loss_weight}"
    check(name, ours["loss"], terms["loss"].numpy())
    check(name + " pred", ours["pred"], from_torch(terms["pred"]))
    if prediction != "velocity" and loss_weight is not None:
        # Negative control: the same loss on a path with alpha and sigma swapped.
        plan = type(transport.path_sampler)

        class Swapped(plan):
            def compute_alpha_t(self, t):
                return plan.compute_sigma_t(self, t)

            def compute_sigma_t(self, t):
                return plan.compute_alpha_t(self, t)

        class SwappedTransport(Transport):
            @property
            def path_sampler(self):
                return Swapped()
        wrong = SwappedTransport(path, prediction, loss_weight)
        assert fails(training_losses(wrong, jax_model, x1, t=t, x0=x0)["loss"], terms["loss"].numpy())


def test_training_loss_runs_in_float32_for_bfloat16_data():
    """bfloat16 latents: t, x0 and the loss stay float32, and the loss equals the float32 data's loss."""
    transport, x1 = Transport("GVP", "noise", "velocity"), data(4)
    t, x0 = jnp.asarray([0.3141, 0.9001]), data(5)
    low = training_losses(transport, jax_model, x1.astype(jnp.bfloat16), t=t, x0=x0)
    high = training_losses(transport, jax_model, x1.astype(jnp.bfloat16).astype(jnp.float32), t=t, x0=x0)
    assert low["loss"].dtype == low["t"].dtype == jnp.float32
    np.testing.assert_array_equal(low["loss"], high["loss"])
    assert hash(Transport("GVP")) == hash(Transport("GVP")) != hash(Transport("VP"))   # usable as a static argument


def test_training_loss_draw_is_reproducible():
    """A loss from a key equals the loss from that key's (t, x0) given explicitly; t lies in [t0, t1]."""
    transport = Transport("VP", "noise", "likelihood")
    x1, key = data(4), jax.random.key(11)
    drawn = training_losses(transport, jax_model, x1, key)
    t, x0 = sample_time_and_noise(transport, key, x1)
    again = training_losses(transport, jax_model, x1, t=t, x0=x0)
    np.testing.assert_array_equal(drawn["loss"], again["loss"])
    t0, t1 = transport.time_interval(True)
    ts = sample_time_and_noise(transport, key, jnp.zeros((1024, 1)))[0]
    assert float(ts.min()) >= t0 and float(ts.max()) <= t1 and float(ts.max()) > t1 - 0.01
    other = training_losses(transport, jax_model, x1, jax.random.key(12))["loss"]
    assert not np.allclose(other, drawn["loss"])
    with pytest.raises(ValueError, match="key"):
        training_losses(transport, jax_model, x1)
