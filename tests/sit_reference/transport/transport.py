"""SiT's transport/transport.py (statement): Transport (time interval, training loss, drift, score)
and Sampler (sample_sde, sample_ode). The likelihood ODE and prior_logp are left out."""

import enum

import torch as th

from . import path
from .integrators import ode, sde
from .utils import mean_flat


class ModelType(enum.Enum):
    NOISE = enum.auto()
    SCORE = enum.auto()
    VELOCITY = enum.auto()


class PathType(enum.Enum):
    LINEAR = enum.auto()
    GVP = enum.auto()
    VP = enum.auto()


class WeightType(enum.Enum):
    NONE = enum.auto()
    VELOCITY = enum.auto()
    LIKELIHOOD = enum.auto()


class Transport:
    def __init__(self, *, model_type, path_type, loss_type, train_eps, sample_eps):
        plans = {PathType.LINEAR: path.ICPlan, PathType.GVP: path.GVPCPlan, PathType.VP: path.VPCPlan}
        self.loss_type, self.model_type = loss_type, model_type
        self.path_sampler = plans[path_type]()
        self.train_eps, self.sample_eps = train_eps, sample_eps

    def check_interval(self, train_eps, sample_eps, *, diffusion_form="SBDM", sde=False, reverse=False,
                       eval=False, last_step_size=0.0):
        t0, t1 = 0, 1
        eps = sample_eps if eval else train_eps
        end = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if type(self.path_sampler) is path.VPCPlan:
            t1 = end
        elif self.model_type != ModelType.VELOCITY or sde:
            # Linear / GVP: start off t = 0 where the conversions (or the SBDM diffusion) divide by t.
            t0 = eps if (diffusion_form == "SBDM" and sde) or self.model_type != ModelType.VELOCITY else 0
            t1 = end
        if reverse:
            t0, t1 = 1 - t0, 1 - t1
        return t0, t1

    def sample(self, x1):
        """x0 ~ N(0, I) first, then t ~ U[t0, t1) (this order of draws fixes the random stream)."""
        x0 = th.randn_like(x1)
        t0, t1 = self.check_interval(self.train_eps, self.sample_eps)
        t = (th.rand((x1.shape[0],)) * (t1 - t0) + t0).to(x1)
        return t, x0, x1

    def training_losses(self, model, x1, model_kwargs=None):
        model_kwargs = model_kwargs or {}
        t, x0, x1 = self.sample(x1)
        t, xt, ut = self.path_sampler.plan(t, x0, x1)
        out = model(xt, t, **model_kwargs)
        assert out.size() == xt.size()
        terms = {"pred": out}
        if self.model_type == ModelType.VELOCITY:
            terms["loss"] = mean_flat((out - ut) ** 2)
            return terms
        _, drift_var = self.path_sampler.compute_drift(xt, t)
        sigma_t, _ = self.path_sampler.compute_sigma_t(path.expand_t_like_x(t, xt))
        if self.loss_type == WeightType.VELOCITY:
            weight = (drift_var / sigma_t) ** 2
        elif self.loss_type == WeightType.LIKELIHOOD:
            weight = drift_var / (sigma_t ** 2)
        else:
            weight = 1
        if self.model_type == ModelType.NOISE:
            terms["loss"] = mean_flat(weight * ((out - x0) ** 2))
        else:
            terms["loss"] = mean_flat(weight * ((out * sigma_t + x0) ** 2))
        return terms

    def get_drift(self):
        """The probability-flow velocity whatever the network predicts."""
        plan = self.path_sampler

        def drift(x, t, model, **kwargs):
            out = model(x, t, **kwargs)
            if self.model_type == ModelType.VELOCITY:
                return out
            drift_mean, drift_var = plan.compute_drift(x, t)
            if self.model_type == ModelType.NOISE:
                out = out / -plan.compute_sigma_t(path.expand_t_like_x(t, x))[0]
            return -drift_mean + drift_var * out

        return drift

    def get_score(self):
        plan = self.path_sampler

        def score(x, t, model, **kwargs):
            out = model(x, t, **kwargs)
            if self.model_type == ModelType.NOISE:
                return out / -plan.compute_sigma_t(path.expand_t_like_x(t, x))[0]
            if self.model_type == ModelType.SCORE:
                return out
            return plan.get_score_from_velocity(out, x, t)

        return score


class Sampler:
    def __init__(self, transport):
        self.transport = transport
        self.drift = transport.get_drift()
        self.score = transport.get_score()

    def _sde_parts(self, diffusion_form, diffusion_norm):
        plan = self.transport.path_sampler

        def diffusion_fn(x, t):
            return plan.compute_diffusion(x, t, form=diffusion_form, norm=diffusion_norm)

        def sde_drift(x, t, model, **kwargs):
            # Two network evaluations, as the official code: one for the drift, one for the score.
            return self.drift(x, t, model, **kwargs) + diffusion_fn(x, t) * self.score(x, t, model, **kwargs)

        return sde_drift, diffusion_fn

    def _last_step(self, sde_drift, last_step, last_step_size):
        if last_step is None:
            return lambda x, t, model, **kw: x
        if last_step == "Mean":
            return lambda x, t, model, **kw: x + sde_drift(x, t, model, **kw) * last_step_size
        if last_step == "Euler":
            return lambda x, t, model, **kw: x + self.drift(x, t, model, **kw) * last_step_size
        if last_step == "Tweedie":
            plan = self.transport.path_sampler

            def tweedie(x, t, model, **kw):
                # The first example's coefficients stand for all (every example is at the same t).
                a, s = plan.compute_alpha_t(t)[0][0], plan.compute_sigma_t(t)[0][0]
                return x / a + (s ** 2) / a * self.score(x, t, model, **kw)
            return tweedie
        raise NotImplementedError()

    def sample_sde(self, *, sampling_method="Euler", diffusion_form="SBDM", diffusion_norm=1.0, last_step="Mean",
                   last_step_size=0.04, num_steps=250):
        if last_step is None:
            last_step_size = 0.0
        sde_drift, sde_diffusion = self._sde_parts(diffusion_form, diffusion_norm)
        t0, t1 = self.transport.check_interval(self.transport.train_eps, self.transport.sample_eps,
                                               diffusion_form=diffusion_form, sde=True, eval=True, reverse=False,
                                               last_step_size=last_step_size)
        solver = sde(sde_drift, sde_diffusion, t0=t0, t1=t1, num_steps=num_steps, sampler_type=sampling_method)
        last = self._last_step(sde_drift, last_step, last_step_size)

        def _sample(init, model, **model_kwargs):
            xs = solver.sample(init, model, **model_kwargs)
            ts = th.ones(init.size(0), device=init.device) * t1
            xs.append(last(xs[-1], ts, model, **model_kwargs))
            assert len(xs) == num_steps, "Samples does not match the number of steps"
            return xs

        return _sample

    def sample_ode(self, *, sampling_method="dopri5", num_steps=50, atol=1e-6, rtol=1e-3, reverse=False):
        t0, t1 = self.transport.check_interval(self.transport.train_eps, self.transport.sample_eps, sde=False,
                                               eval=True, reverse=reverse, last_step_size=0.0)
        return ode(drift=self.drift, t0=t0, t1=t1, sampler_type=sampling_method, num_steps=num_steps, atol=atol,
                   rtol=rtol).sample
