"""SiT's models.py (statement) for the parts that differ from DiT: forward drops the learned-sigma
half of the output, and forward_with_cfg guides the first 3 channels of what is left.

`SiT(net, in_channels)` wraps any network net(x, t, y) -> 2 * in_channels channels (NCHW), e.g. the
DiT of tests/torch_reference with learn_sigma=True, whose blocks SiT shares unchanged. The official
SiT class is that DiT itself (same submodules), so its state dict carries DiT's names; the wrapper's
`state_dict` / `load_state_dict` are the wrapped network's, so a checkpoint written from this
statement has the official names too (no "net." prefix).
"""

import torch
from torch import nn


class SiT(nn.Module):
    def __init__(self, net, in_channels=4, learn_sigma=True):
        super().__init__()
        self.net, self.in_channels, self.learn_sigma = net, in_channels, learn_sigma

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

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
