"""SiT's transport/integrators.py (statement): the SDE loop and the torchdiffeq ODE call.

sde: num_steps - 1 steps over linspace(t0, t1, num_steps) with the constant dt = t[1] - t[0]; each
step draws its noise with th.randn. ode: torchdiffeq's odeint over linspace(t0, t1, num_steps).
"""

import torch as th
from torchdiffeq import odeint


class sde:
    def __init__(self, drift, diffusion, *, t0, t1, num_steps, sampler_type):
        assert t0 < t1, "SDE sampler has to be in forward time"
        self.num_timesteps = num_steps
        self.t = th.linspace(t0, t1, num_steps)
        self.dt = self.t[1] - self.t[0]
        self.drift, self.diffusion = drift, diffusion
        self.sampler_type = sampler_type

    def __Euler_Maruyama_step(self, x, mean_x, t, model, **model_kwargs):
        w = th.randn(x.size()).to(x)
        t = th.ones(x.size(0)).to(x) * t
        dw = w * th.sqrt(self.dt)
        drift = self.drift(x, t, model, **model_kwargs)
        diffusion = self.diffusion(x, t)
        mean_x = x + drift * self.dt
        return mean_x + th.sqrt(2 * diffusion) * dw, mean_x

    def __Heun_step(self, x, _, t, model, **model_kwargs):
        w = th.randn(x.size()).to(x)
        dw = w * th.sqrt(self.dt)
        t_cur = th.ones(x.size(0)).to(x) * t
        diffusion = self.diffusion(x, t_cur)
        xhat = x + th.sqrt(2 * diffusion) * dw
        k1 = self.drift(xhat, t_cur, model, **model_kwargs)
        xp = xhat + self.dt * k1
        k2 = self.drift(xp, t_cur + self.dt, model, **model_kwargs)
        return xhat + 0.5 * self.dt * (k1 + k2), xhat

    def sample(self, init, model, **model_kwargs):
        steps = {"Euler": self.__Euler_Maruyama_step, "Heun": self.__Heun_step}
        if self.sampler_type not in steps:
            raise NotImplementedError("Smapler type not implemented.")
        step = steps[self.sampler_type]
        x = mean_x = init
        samples = []
        for ti in self.t[:-1]:
            with th.no_grad():
                x, mean_x = step(x, mean_x, ti, model, **model_kwargs)
                samples.append(x)
        return samples


class ode:
    def __init__(self, drift, *, t0, t1, sampler_type, num_steps, atol, rtol):
        self.drift = drift
        self.t = th.linspace(t0, t1, num_steps)
        self.atol, self.rtol = atol, rtol
        self.sampler_type = sampler_type

    def sample(self, x, model, **model_kwargs):
        def _fn(t, x):
            return self.drift(x, th.ones(x.size(0)).to(x.device) * t, model, **model_kwargs)

        return odeint(_fn, x, self.t.to(x.device), method=self.sampler_type, atol=[self.atol], rtol=[self.rtol])
