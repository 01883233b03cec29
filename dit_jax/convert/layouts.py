"""PyTorch <-> Flax layouts of weights, shared by every converter: one statement of each transpose."""

from __future__ import annotations

import numpy as np


def conv_from_torch(w):
    """A conv weight (out, in, kh, kw) as Flax's kernel (kh, kw, in, out)."""
    return w.transpose(2, 3, 1, 0)


def conv_to_torch(k):
    """A Flax conv kernel (kh, kw, in, out) as PyTorch's weight (out, in, kh, kw)."""
    return k.transpose(3, 2, 0, 1)


def linear_from_torch(w):
    """A Linear weight (out, in) as Flax's kernel (in, out)."""
    return w.T


def linear_to_torch(k):
    return k.T


def from_torch_by_rank(w):
    """4-D: a conv weight, 2-D: a linear weight, else as it is (biases, norms); contiguous."""
    w = conv_from_torch(w) if w.ndim == 4 else linear_from_torch(w) if w.ndim == 2 else w
    return np.ascontiguousarray(w)


def to_torch_by_rank(k):
    k = conv_to_torch(k) if k.ndim == 4 else linear_to_torch(k) if k.ndim == 2 else k
    return np.ascontiguousarray(k)
