"""Checks shared by tests/test_export.py and tests/test_bioimageio.py: exported outputs against PyTorch's."""

from __future__ import annotations

import numpy as np
import torch

#: Odd sizes above every network's multiple (16 for the tiny U-Net, 32 for SegNet), never a multiple of it.
SIZES = [(37, 53), (71, 45)]


def odd_inputs(model, batch=1):
    """Normalized-looking random batches of two odd sizes, and the model's own outputs for them."""
    rng = np.random.default_rng(1)
    batches = [rng.random((batch, model.in_channels, *size), dtype=np.float32) for size in SIZES]
    with torch.inference_mode():
        return [(x, model.network(torch.from_numpy(x)).numpy()) for x in batches]


def assert_close(got, expected):
    assert got.shape == expected.shape
    assert expected.std() > 1e-3, "the reference output is constant: the comparison would prove nothing"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))
