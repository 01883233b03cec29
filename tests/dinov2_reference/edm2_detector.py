"""A PyTorch/numpy statement of EDM2's FD_DINOv2 (NVlabs/edm2 `calculate_metrics.py`: `DINOv2Detector`,
the statistics accumulation of `calculate_stats_for_iterable` and `calculate_metrics_from_stats`),
written from its behaviour. The detector model is passed in (EDM2 takes torch.hub's dinov2_vitl14)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import scipy.linalg
import torch
import torch.nn.functional as F


class DINOv2Detector:
    feature_dim = 1024

    def __init__(self, model, resize_mode="torch"):
        self.model, self.resize_mode = model.eval(), resize_mode

    def __call__(self, x):
        """x: NCHW uint8 -> the model's output (the normalised CLS token), float32."""
        if self.resize_mode == "pil":
            arr = x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
            arr = np.stack([np.uint8(PIL.Image.fromarray(a, "RGB").resize((224, 224), PIL.Image.Resampling.BICUBIC))
                            for a in arr])
            x = torch.from_numpy(arr).permute(0, 3, 1, 2)
        elif self.resize_mode == "torch":
            x = F.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
        else:
            raise ValueError(self.resize_mode)
        x = x.to(torch.float32) / 255
        x = x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
        x = x / torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)
        with torch.no_grad():
            return self.model(x)


def statistics(detector, batches):
    """mu and sigma accumulated in float64 over batches, as calculate_stats_for_iterable does."""
    cum_mu, cum_sigma, n = 0.0, 0.0, 0
    for images in batches:
        f = detector(torch.as_tensor(images)).to(torch.float64)
        cum_mu = cum_mu + f.sum(0)
        cum_sigma = cum_sigma + f.T @ f
        n += images.shape[0]
    mu = cum_mu / n
    sigma = (cum_sigma - torch.outer(mu, mu) * n) / (n - 1)
    return mu.numpy(), sigma.numpy()


def frechet(mu, sigma, mu_ref, sigma_ref):
    """calculate_metrics_from_stats: scipy's sqrtm of the product as it comes, real part of the total."""
    m = np.square(mu - mu_ref).sum()
    s = scipy.linalg.sqrtm(np.dot(sigma, sigma_ref))
    s = s[0] if isinstance(s, tuple) else s
    return float(np.real(m + np.trace(sigma + sigma_ref - s * 2)))
