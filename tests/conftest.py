import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "torch_reference")


@pytest.fixture(scope="session")
def reference():
    """The PyTorch statement of the official code: (models module, diffusion package)."""
    pytest.importorskip("torch")
    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    import diffusion
    import models
    return models, diffusion
