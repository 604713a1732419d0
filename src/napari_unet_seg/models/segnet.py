"""SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017) with a VGG16-bn encoder, written in MONAI's style.

MONAI has no SegNet. The encoder is VGG16 with batch norm (13 convolutions in 5 blocks); each block ends
in a 2x2 max-pool whose indices the mirrored decoder uses to upsample (``MaxUnpool2d``), so no
up-convolution weights are learned and boundaries keep their place. ``spatial_dims=3`` makes the same
network of 3D convolutions and pools (each pool's kernel one stride per axis, e.g. ``(1, 2, 2)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SegNet"]

#: Convolutions per block in VGG16.
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_FEATURES = (64, 128, 256, 512, 512)


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _conv_bn_relu(in_channels: int, out_channels: int, dims: int = 2) -> nn.Sequential:
    return nn.Sequential(
        _CONV[dims](in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        _NORM[dims](out_channels),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """SegNet for 2D images (or 3D volumes).

    Args:
        in_channels: channels of the input image (1 gray, 3 RGB).
        out_channels: output logits (1 for binary with sigmoid, else the number of classes).
        features: channels of the five encoder blocks; VGG16's by default. Halve them for a model
            four times smaller (``width=0.5`` in :func:`napari_unet_seg.models.build_network`).
        blocks: convolutions per block; VGG16's ``(2, 2, 3, 3, 3)`` by default.
        spatial_dims: 2 or 3.
        strides: each block's pooling, one int or one per axis (2 everywhere by default).

    Shapes:
        input ``(N, in_channels, *spatial)`` with each axis divisible by :attr:`divisor` (``2 ** len(features)``
        by default); output ``(N, out_channels, *spatial)``. :func:`~napari_unet_seg.models.build_network`
        pads any size.
    """

    def __init__(self, in_channels: int, out_channels: int, features: Sequence[int] = VGG16_FEATURES,
                 blocks: Sequence[int] = VGG16_BLOCKS, spatial_dims: int = 2,
                 strides: Sequence[int | Sequence[int]] | None = None) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if len(features) != len(blocks) or not features:
            raise ValueError(f"features {tuple(features)} and blocks {tuple(blocks)} must have the same length")
        dims = spatial_dims
        strides = [[2] * dims] * len(features) if strides is None else [
            [k] * dims if isinstance(k, int) else list(k) for k in strides]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width, count in zip(features, blocks):
            layers = [_conv_bn_relu(previous if i == 0 else width, width, dims) for i in range(count)]
            self.encoders.append(nn.Sequential(*layers))
            previous = width
        self.decoders = nn.ModuleList()
        # Decoder i mirrors encoder i; its last convolution maps to the channels of the block above.
        for level, (width, count) in enumerate(zip(features, blocks)):
            target = features[level - 1] if level > 0 else features[0]
            layers = [_conv_bn_relu(width, width, dims) for _ in range(count - 1)] + [_conv_bn_relu(width, target, dims)]
            self.decoders.append(nn.Sequential(*layers))
        pool, unpool = (nn.MaxPool2d, nn.MaxUnpool2d) if dims == 2 else (nn.MaxPool3d, nn.MaxUnpool3d)
        self.pools = nn.ModuleList(pool(kernel_size=k, stride=k, return_indices=True) for k in map(tuple, strides))
        self.unpools = nn.ModuleList(unpool(kernel_size=k, stride=k) for k in map(tuple, strides))
        self.head = _CONV[dims](features[0], out_channels, kernel_size=3, padding=1)
        self.divisor = [math.prod(level[axis] for level in strides) for axis in range(dims)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, sizes = [], []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            sizes.append(x.shape)
            x, index = pool(x)
            indices.append(index)
        for decoder, unpool, index, size in zip(reversed(self.decoders), reversed(self.unpools), reversed(indices),
                                                reversed(sizes)):
            x = decoder(unpool(x, index, output_size=size))
        return self.head(x)
