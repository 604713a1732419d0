"""SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017) with a VGG16-bn encoder, written in MONAI's style.

MONAI has no SegNet. The encoder is VGG16 with batch norm (13 convolutions in 5 blocks); each block ends
in a 2x2 max-pool whose indices the mirrored decoder uses to upsample (``MaxUnpool2d``), so no
up-convolution weights are learned and boundaries keep their place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SegNet"]

#: Convolutions per block in VGG16.
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_FEATURES = (64, 128, 256, 512, 512)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """SegNet for 2D images.

    Args:
        in_channels: channels of the input image (1 gray, 3 RGB).
        out_channels: output logits (1 for binary with sigmoid, else the number of classes).
        features: channels of the five encoder blocks; VGG16's by default. Halve them for a model
            four times smaller (``width=0.5`` in :func:`napari_unet_seg.models.build_network`).
        blocks: convolutions per block; VGG16's ``(2, 2, 3, 3, 3)`` by default.

    Shapes:
        input ``(N, in_channels, H, W)`` with H and W divisible by ``2 ** len(features)``;
        output ``(N, out_channels, H, W)``. :func:`~napari_unet_seg.models.build_network` pads any size.
    """

    def __init__(self, in_channels: int, out_channels: int, features: Sequence[int] = VGG16_FEATURES,
                 blocks: Sequence[int] = VGG16_BLOCKS) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if len(features) != len(blocks) or not features:
            raise ValueError(f"features {tuple(features)} and blocks {tuple(blocks)} must have the same length")
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width, count in zip(features, blocks):
            layers = [_conv_bn_relu(previous if i == 0 else width, width) for i in range(count)]
            self.encoders.append(nn.Sequential(*layers))
            previous = width
        self.decoders = nn.ModuleList()
        # Decoder i mirrors encoder i; its last convolution maps to the channels of the block above.
        for level, (width, count) in enumerate(zip(features, blocks)):
            target = features[level - 1] if level > 0 else features[0]
            layers = [_conv_bn_relu(width, width) for _ in range(count - 1)] + [_conv_bn_relu(width, target)]
            self.decoders.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        self.head = nn.Conv2d(features[0], out_channels, kernel_size=3, padding=1)
        self.divisor = 2 ** len(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, sizes = [], []
        for encoder in self.encoders:
            x = encoder(x)
            sizes.append(x.shape)
            x, index = self.pool(x)
            indices.append(index)
        for decoder, index, size in zip(reversed(self.decoders), reversed(indices), reversed(sizes)):
            x = decoder(self.unpool(x, index, output_size=size))
        return self.head(x)
