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


def model_3d(name, spacing=None, width=0.125):
    """A tiny untrained 3D network as a model; batch-norm statistics set so that its output varies."""
    from torch import nn

    from napari_unet_seg.model_file import SegmentationModel
    from napari_unet_seg.models import build_network, network_kwargs
    from napari_unet_seg.normalization import default_normalization

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    kwargs = network_kwargs(name, width, spatial_dims=3, spacing=spacing)
    network = build_network(name, 1, 1, **kwargs).eval()
    for module in network.modules():
        if isinstance(module, nn.BatchNorm3d):  # at init the deep activations vanish and the output is constant
            module.running_var.uniform_(0.07, 0.14, generator=generator)
            module.running_mean.normal_(0.0, 0.05, generator=generator)
    config = {"spacing": list(spacing)} if spacing else {}
    return SegmentationModel(network, {"name": name, "kwargs": kwargs}, 1, 2, default_normalization(), config=config)


def odd_volumes(model, batch=1):
    """Random batches of two sizes just above the network's multiple on each axis (odd where the multiple is
    even, never a multiple of it), and the model's own outputs for them."""
    from napari_unet_seg.export import multiples

    steps = multiples(model)
    rng = np.random.default_rng(1)
    shapes = [[m + 1 + 2 * ((axis + k) % 3) for axis, m in enumerate(steps)] for k in (1, 2)]
    batches = [rng.random((batch, model.in_channels, *shape), dtype=np.float32) for shape in shapes]
    with torch.inference_mode():
        return [(x, model.network(torch.from_numpy(x)).numpy()) for x in batches]


def raw_volume(model):
    """A raw uint8 volume just large enough for the model: what the export's check runs on in the tests."""
    from napari_unet_seg.export import min_sizes

    shape = [m + 4 for m in min_sizes(model)]
    return np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
