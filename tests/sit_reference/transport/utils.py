"""SiT's transport/utils.py (statement): only mean_flat is used by the formulas."""

import torch as th


def mean_flat(x):
    """Mean over every dimension but the batch."""
    return th.mean(x, dim=list(range(1, len(x.size()))))
