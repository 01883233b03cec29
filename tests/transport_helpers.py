"""Shared set-up of the SiT transport tests (tests/test_transport_*.py): the PyTorch statement of
the official transport package (tests/sit_reference; set SIT_REFERENCE=/path/to/SiT to use a real
checkout), the fixed network both sides evaluate (ours channels-last, the reference's NCHW), and the
relative-error checks with their negative-control test.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.parity.sit import _load_module
from dit_jax.transport import PATHS, PREDICTIONS, Transport

import helpers

torch = pytest.importorskip("torch")

SHAPE = (2, 4, 4, 4)      # (B, H, W, C), channels last
B, C = SHAPE[0], SHAPE[-1]
TOL = 1e-5                # relative, float32 against float32 (torch) or float64 (numpy)
SIT_DIR = os.environ.get("SIT_REFERENCE") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "sit_reference")

# Largest relative errors seen, by name (printed with `pytest -s`).
MEASURED: dict = {}


def report_measured():
    """This file's largest errors (its module fixture calls this at the end)."""
    helpers.report_measured(MEASURED)


def check(name, ours, expected, tol=TOL):
    helpers.check_rel(MEASURED, name, ours, expected, tol)


def fails(ours, expected, tol=TOL) -> bool:
    """Negative controls: the perturbed computation must miss the tolerance clearly (10x)."""
    return helpers.rel_err(ours, expected) > 10 * tol


# ---------------------------------------------------------------------------------------------
# The reference package, the shared network and layout helpers.
# ---------------------------------------------------------------------------------------------

def load_sit():
    """The reference's transport package and models module, loaded under private names (tests/
    torch_reference also has a top-level `models`)."""
    package = os.path.join(SIT_DIR, "transport")
    transport = _load_module("sit_reference_transport", os.path.join(package, "__init__.py"), package)
    models = _load_module("sit_reference_models", os.path.join(SIT_DIR, "models.py")) if SIT_DIR.endswith(
        "sit_reference") else None
    return transport, models


RNG = np.random.default_rng(20)
W = (RNG.normal(size=(C, C)) * 0.6).astype(np.float32)
U = RNG.normal(size=(C,)).astype(np.float32)
BIAS = (RNG.normal(size=(C,)) * 0.1).astype(np.float32)
NUM_CLASSES = 3
W2 = (RNG.normal(size=(C, 2 * C)) * 0.6).astype(np.float32)
U2 = RNG.normal(size=(2 * C,)).astype(np.float32)
EMB = RNG.normal(size=(NUM_CLASSES + 1, 2 * C)).astype(np.float32)


def jax_model(x, t):
    return jnp.tanh(x @ W + t.reshape(-1, 1, 1, 1) * U + BIAS)


def torch_model(x, t):
    """The same network on NCHW tensors."""
    h = x.permute(0, 2, 3, 1) @ torch.from_numpy(W) + t.reshape(-1, 1, 1, 1) * torch.from_numpy(U) \
        + torch.from_numpy(BIAS)
    return torch.tanh(h).permute(0, 3, 1, 2)


def jax_class_model(x, t, y):
    """A class-conditional network with 2C output channels (a learned-sigma half)."""
    return jnp.tanh(x @ W2 + t.reshape(-1, 1, 1, 1) * U2 + EMB[y][:, None, None, :])


def torch_class_model(x, t, y):
    h = x.permute(0, 2, 3, 1) @ torch.from_numpy(W2) + t.reshape(-1, 1, 1, 1) * torch.from_numpy(U2) \
        + torch.from_numpy(EMB)[y][:, None, None, :]
    return torch.tanh(h).permute(0, 3, 1, 2)


def to_torch(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x, np.float32), (0, 3, 1, 2))))


def from_torch(x):
    return np.transpose(x.detach().numpy(), (0, 2, 3, 1))


def data(seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32) * scale)


def ref_transport(sit, transport: Transport):
    return sit[0].create_transport(transport.path, transport.prediction, transport.loss_weight,
                                   transport.train_eps, transport.sample_eps)


COMBOS = [(p, q) for p in PATHS for q in PREDICTIONS]
T_INTERIOR = np.array([0.13, 0.71], np.float32)


# The fixtures every transport test file uses, imported by name into each (pytest finds a fixture
# through the module's namespace); defined once here.
@pytest.fixture(scope="module", autouse=True)
def report_each_file():
    yield
    report_measured()   # this file's largest relative errors, shown with `pytest -s`


@pytest.fixture(scope="module")
def sit():
    return load_sit()
