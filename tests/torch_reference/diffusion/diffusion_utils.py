"""Likelihood helpers of the IDDPM/ADM diffusion code as used by DiT (statement, not a copy)."""

import numpy as np
import torch as th


def mean_flat(tensor):
    """Mean over every dimension except the batch dimension."""
    return tensor.mean(dim=list(range(1, tensor.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, broadcasting; in nats."""
    ref = next((o for o in (mean1, logvar1, mean2, logvar2) if isinstance(o, th.Tensor)), None)
    assert ref is not None, "at least one argument must be a Tensor"
    # log-variances must be tensors for th.exp
    logvar1, logvar2 = [v if isinstance(v, th.Tensor) else th.tensor(v).to(ref) for v in (logvar1, logvar2)]
    return 0.5 * (-1.0 + logvar2 - logvar1 + th.exp(logvar1 - logvar2)
                  + ((mean1 - mean2) ** 2) * th.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + th.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * th.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-probability (nats) of x in [-1, 1] under a Gaussian discretised into 255 bins of width 2/255.

    The outermost bins extend to -inf (x < -0.999) and +inf (x > 0.999).
    """
    assert x.shape == means.shape == log_scales.shape
    centered = x - means
    inv_std = th.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = th.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = th.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = th.log((cdf_plus - cdf_min).clamp(min=1e-12))
    log_probs = th.where(x < -0.999, log_cdf_plus,
                         th.where(x > 0.999, log_one_minus_cdf_min, log_delta))
    assert log_probs.shape == x.shape
    return log_probs
