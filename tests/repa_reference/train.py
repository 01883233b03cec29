"""One iteration of REPA's train.py (statement): posterior sample, SILoss, backward, grad-norm clip,
AdamW, EMA over every named parameter."""

import torch


def sample_posterior(mean, std, scale=0.18215):
    return (mean + std * torch.randn_like(mean)) * scale


def train_iteration(model, ema, optimizer, loss_fn, mean, std, y, zs, proj_coeff=0.5, max_grad_norm=1.0,
                    ema_decay=0.9999):
    """Returns (total loss, denoising mean, projection loss, grad norm before clipping)."""
    with torch.no_grad():
        x = sample_posterior(mean, std)
    denoise, proj = loss_fn(model, x, y, zs)
    loss = denoise.mean() + proj_coeff * proj
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in model.named_parameters()], max_grad_norm)
    optimizer.step()
    with torch.no_grad():
        live = dict(model.named_parameters())
        for name, p in ema.named_parameters():
            p.mul_(ema_decay).add_(live[name].data, alpha=1 - ema_decay)
    return loss.detach(), denoise.mean().detach(), torch.as_tensor(proj).detach(), grad_norm
