"""Gaussian diffusion (IDDPM/ADM as configured by DiT): a compact statement of the official API.

All schedule constants are float64 numpy arrays; per-timestep values are gathered and cast to float32.
"""

import enum

import numpy as np
import torch as th

from .diffusion_utils import discretized_gaussian_log_likelihood, mean_flat, normal_kl


class ModelMeanType(enum.Enum):
    PREVIOUS_X = enum.auto()  # model predicts x_{t-1}
    START_X = enum.auto()     # model predicts x_0
    EPSILON = enum.auto()     # model predicts the noise


class ModelVarType(enum.Enum):
    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()  # model outputs v in [-1, 1] interpolating log beta and log posterior var


class LossType(enum.Enum):
    MSE = enum.auto()          # MSE (+ VB term when the variance is learned)
    RESCALED_MSE = enum.auto() # MSE + VB * num_timesteps / 1000
    KL = enum.auto()           # variational bound only
    RESCALED_KL = enum.auto()  # VB * num_timesteps

    def is_vb(self):
        return self in (LossType.KL, LossType.RESCALED_KL)


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """Only the "linear" schedule (Ho et al., rescaled so any step count spans the same range)."""
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    raise NotImplementedError(f"unknown beta schedule: {schedule_name}")


def _extract_into_tensor(arr, timesteps, broadcast_shape):
    """Gather arr[timesteps] (float64 numpy -> float32 tensor) and broadcast to broadcast_shape."""
    res = th.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    while res.dim() < len(broadcast_shape):
        res = res[..., None]
    return res + th.zeros(broadcast_shape, device=timesteps.device)


class GaussianDiffusion:
    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type

        betas = np.array(betas, dtype=np.float64)
        assert betas.ndim == 1 and (betas > 0).all() and (betas <= 1).all()
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        abar = np.cumprod(alphas, axis=0)
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = np.append(1.0, abar[:-1])
        self.alphas_cumprod_next = np.append(abar[1:], 0.0)

        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(abar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1)

        # q(x_{t-1} | x_t, x_0); the log variance at t=0 (where it is 0) is replaced by the one at t=1
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - abar)
        if self.num_timesteps > 1:
            self.posterior_log_variance_clipped = np.log(
                np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        else:
            self.posterior_log_variance_clipped = np.array([])
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - abar)

    # ---------------------------------------------------------------- forward process
    def q_sample(self, x_start, t, noise=None):
        if noise is None:
            noise = th.randn_like(x_start)
        assert noise.shape == x_start.shape
        return (_extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        assert x_start.shape == x_t.shape
        mean = (_extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        var = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_var = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, var, log_var

    # ---------------------------------------------------------------- model
    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        if model_kwargs is None:
            model_kwargs = {}
        B, C = x.shape[:2]
        assert t.shape == (B,)
        model_output = model(x, t, **model_kwargs)
        extra = None
        if isinstance(model_output, tuple):
            model_output, extra = model_output

        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            # (as in DiT's copy, LEARNED is handled like LEARNED_RANGE)
            assert model_output.shape == (B, C * 2, *x.shape[2:])
            model_output, v = th.split(model_output, C, dim=1)
            min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract_into_tensor(np.log(self.betas), t, x.shape)
            frac = (v + 1) / 2  # v is not clamped
            model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = th.exp(model_log_variance)
        else:
            if self.model_var_type == ModelVarType.FIXED_LARGE:
                # betas, with the first entry set to posterior_variance[1]
                var = np.append(self.posterior_variance[1], self.betas[1:])
                log_var = np.log(var)
            elif self.model_var_type == ModelVarType.FIXED_SMALL:
                var, log_var = self.posterior_variance, self.posterior_log_variance_clipped
            else:
                raise NotImplementedError(self.model_var_type)
            model_variance = _extract_into_tensor(var, t, x.shape)
            model_log_variance = _extract_into_tensor(log_var, t, x.shape)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = process_xstart(model_output)
        else:  # epsilon prediction
            pred_xstart = process_xstart(self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output))
        model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
        assert model_mean.shape == model_log_variance.shape == pred_xstart.shape == x.shape
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance,
                "pred_xstart": pred_xstart, "extra": extra}

    def _predict_xstart_from_eps(self, x_t, t, eps):
        assert x_t.shape == eps.shape
        return (_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return ((_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart)
                / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    # ---------------------------------------------------------------- sampling
    @staticmethod
    def _no_cond_fn(cond_fn):
        if cond_fn is not None:
            raise NotImplementedError("cond_fn (classifier guidance) is not supported by this reference statement")

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None):
        """Ancestral step: x_{t-1} = mean + [t != 0] * exp(0.5 * log_var) * noise."""
        self._no_cond_fn(cond_fn)
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised,
                                   denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        noise = th.randn_like(x)  # drawn at every step, also t == 0
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = out["mean"] + nonzero_mask * th.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def _sample_loop(self, step, model, shape, noise, device, progress, **step_kwargs):
        if device is None:
            device = next(model.parameters()).device
        assert isinstance(shape, (tuple, list))
        img = noise if noise is not None else th.randn(*shape, device=device)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices)
        for i in indices:
            t = th.tensor([i] * shape[0], device=device)
            with th.no_grad():
                img = step(model, img, t, **step_kwargs)["sample"]
        return img

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False):
        return self._sample_loop(self.p_sample, model, shape, noise, device, progress,
                                 clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                 cond_fn=cond_fn, model_kwargs=model_kwargs)

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0):
        """DDIM step (eq. 12 of Song et al.); eps is re-derived from pred_xstart, learned variance unused."""
        self._no_cond_fn(cond_fn)
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised,
                                   denoised_fn=denoised_fn, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        abar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * th.sqrt((1 - abar_prev) / (1 - abar)) * th.sqrt(1 - abar / abar_prev)
        noise = th.randn_like(x)  # drawn even when eta == 0
        mean_pred = out["pred_xstart"] * th.sqrt(abar_prev) + th.sqrt(1 - abar_prev - sigma ** 2) * eps
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = mean_pred + nonzero_mask * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0):
        return self._sample_loop(self.ddim_sample, model, shape, noise, device, progress,
                                 clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                 cond_fn=cond_fn, model_kwargs=model_kwargs, eta=eta)

    # ---------------------------------------------------------------- losses
    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """VLB term in bits: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or decoder NLL at t == 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / np.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"],
                                                   log_scales=0.5 * out["log_variance"])
        assert nll.shape == x_start.shape
        nll = mean_flat(nll) / np.log(2.0)
        return {"output": th.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Returns a dict of per-example terms: "loss", and "mse" / "vb" for the MSE loss types."""
        if model_kwargs is None:
            model_kwargs = {}
        if noise is None:
            noise = th.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}

        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model=model, x_start=x_start, x_t=x_t, t=t,
                                               clip_denoised=False, model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] *= self.num_timesteps
        elif self.loss_type in (LossType.MSE, LossType.RESCALED_MSE):
            model_output = model(x_t, t, **model_kwargs)
            if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
                B, C = x_t.shape[:2]
                assert model_output.shape == (B, C * 2, *x_t.shape[2:])
                model_output, v = th.split(model_output, C, dim=1)
                # VB trains only the variance: the mean prediction is detached
                frozen_out = th.cat([model_output.detach(), v], dim=1)
                terms["vb"] = self._vb_terms_bpd(model=lambda *args, r=frozen_out: r, x_start=x_start,
                                                 x_t=x_t, t=t, clip_denoised=False)["output"]
                if self.loss_type == LossType.RESCALED_MSE:
                    terms["vb"] *= self.num_timesteps / 1000.0
            if self.model_mean_type == ModelMeanType.PREVIOUS_X:
                target = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)[0]
            elif self.model_mean_type == ModelMeanType.START_X:
                target = x_start
            else:
                target = noise
            assert model_output.shape == target.shape == x_start.shape
            terms["mse"] = mean_flat((target - model_output) ** 2)
            terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        else:
            raise NotImplementedError(self.loss_type)
        return terms
