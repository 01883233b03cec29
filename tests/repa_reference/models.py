"""REPA's SiT (statement): a DiT backbone with unscaled time and no learned sigma, plus projector MLPs
on the hidden tokens after block `encoder_depth`."""

import torch
from torch import nn


def projector(hidden, projector_dim, z_dim):
    return nn.Sequential(nn.Linear(hidden, projector_dim), nn.SiLU(), nn.Linear(projector_dim, projector_dim),
                         nn.SiLU(), nn.Linear(projector_dim, z_dim))


class RepaSiT(nn.Module):
    """`net`: the DiT of tests/torch_reference built with learn_sigma=False. Its submodules are used as
    REPA's SiT uses its own (same names), so `state_dict()` has REPA's names."""

    def __init__(self, net, encoder_depth, z_dims, projector_dim=2048):
        super().__init__()
        self.net, self.encoder_depth = net, encoder_depth
        hidden = net.pos_embed.shape[-1]
        self.projectors = nn.ModuleList([projector(hidden, projector_dim, z) for z in z_dims])
        for m in self.projectors.modules():   # REPA initialises every Linear with xavier_uniform, zero bias
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def state_dict(self, *args, **kwargs):
        sd = self.net.state_dict()
        sd.update({f"projectors.{k}": v for k, v in self.projectors.state_dict().items()})
        return sd

    def load_state_dict(self, sd, strict=True):
        self.net.load_state_dict({k: v for k, v in sd.items() if not k.startswith("projectors.")}, strict=strict)
        self.projectors.load_state_dict({k[len("projectors."):]: v for k, v in sd.items()
                                         if k.startswith("projectors.")}, strict=strict)

    def named_parameters(self, *args, **kwargs):
        yield from self.net.named_parameters()
        for k, v in self.projectors.named_parameters():
            yield f"projectors.{k}", v

    def forward(self, x, t, y):
        net = self.net
        h = net.x_embedder(x) + net.pos_embed
        n, tokens, d = h.shape
        c = net.t_embedder(t) + net.y_embedder(y, self.training)
        zs = None
        for i, block in enumerate(net.blocks):
            h = block(h, c)
            if i + 1 == self.encoder_depth:
                zs = [p(h.reshape(-1, d)).reshape(n, tokens, -1) for p in self.projectors]
        return net.unpatchify(net.final_layer(h, c)), zs
