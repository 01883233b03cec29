"""SiT's models.py (statement) for the parts that differ from DiT: forward drops the learned-sigma
half of the output, and forward_with_cfg guides the first 3 channels of what is left.

`SiT(net, in_channels)` wraps any network net(x, t, y) -> 2 * in_channels channels (NCHW), e.g. the
DiT of tests/torch_reference with learn_sigma=True, whose blocks SiT shares unchanged.
"""

import torch
from torch import nn


class SiT(nn.Module):
    def __init__(self, net, in_channels=4, learn_sigma=True):
        super().__init__()
        self.net, self.in_channels, self.learn_sigma = net, in_channels, learn_sigma

    def forward(self, x, t, y):
        x = self.net(x, t, y)
        if self.learn_sigma:
            x, _ = x.chunk(2, dim=1)
        return x

    def forward_with_cfg(self, x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        model_out = self.forward(torch.cat([half, half], dim=0), t, y)
        eps, rest = model_out[:, :3], model_out[:, 3:]   # 3 channels, as DiT (reproducibility)
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)
