"""Network registry: ``build_network(name, in_channels, out_channels, **kwargs)`` for every model name.

``unet``, ``basic_unet`` and ``attention_unet`` are MONAI's; ``segnet`` is ours (:mod:`.segnet`). Every
network is wrapped in :class:`PadToMultiple`, so it takes any input size and returns the same size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MODELS as MODEL_NAMES  # the choice lists live in config
from ..errors import UserError

__all__ = ["MODEL_NAMES", "PadToMultiple", "build_network", "network_kwargs", "parameter_count"]


#: The buffers (not parameters) a network's state dict holds: batch norm's running statistics.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class PadToMultiple(nn.Module):
    """Pads height and width up to a multiple of ``multiple`` (and at least two of them, so the deepest
    level keeps more than one pixel for its normalization), by reflection, and crops the output back."""

    def __init__(self, network: nn.Module, multiple: int) -> None:
        super().__init__()
        self.network = network
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        least = 2 * self.multiple
        pad_h = max(-height % self.multiple, least - height)
        pad_w = max(-width % self.multiple, least - width)
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        y = self.network(x)
        return y[..., :height, :width] if (pad_h or pad_w) else y


def _widths(base: tuple[int, ...], width: float) -> tuple[int, ...]:
    return tuple(max(4, int(round(c * width))) for c in base)


def network_kwargs(name: str, width: float = 1.0, **overrides: Any) -> dict[str, Any]:
    """The full constructor arguments of network ``name`` (stored in model files to rebuild it)."""
    # Batch norm (not MONAI's default instance norm) for the U-Nets: in eval mode it does not depend on
    # the tile's own statistics, so tiled prediction matches whole-image prediction.
    if name == "unet":
        kwargs = {"channels": _widths((16, 32, 64, 128, 256), width), "strides": (2, 2, 2, 2), "num_res_units": 2,
                  "norm": "batch"}
    elif name == "basic_unet":
        kwargs = {"features": _widths((32, 32, 64, 128, 256, 32), width), "norm": "batch"}
    elif name == "attention_unet":
        kwargs = {"channels": _widths((16, 32, 64, 128, 256), width), "strides": (2, 2, 2, 2)}
    elif name == "segnet":
        kwargs = {"features": _widths((64, 128, 256, 512, 512), width)}
    else:
        raise UserError(f"model {name!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    kwargs.update(overrides)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def build_network(name: str, in_channels: int, out_channels: int, **kwargs: Any) -> PadToMultiple:
    """Build network ``name`` (see :data:`MODEL_NAMES`) for 2D images; ``kwargs`` as from :func:`network_kwargs`.

    Example:
        >>> net = build_network("segnet", 3, 1, **network_kwargs("segnet", width=0.25))
        >>> net(torch.zeros(1, 3, 37, 50)).shape
        torch.Size([1, 1, 37, 50])
    """
    if not kwargs:
        kwargs = network_kwargs(name)
    if name == "unet":
        from monai.networks.nets.unet import UNet

        network = UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, **kwargs)
        multiple = 2 ** len(kwargs["strides"])
    elif name == "basic_unet":
        from monai.networks.nets.basic_unet import BasicUNet

        network = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, **kwargs)
        multiple = 16
    elif name == "attention_unet":
        from monai.networks.nets.attentionunet import AttentionUnet

        network = AttentionUnet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, **kwargs)
        multiple = 2 ** len(kwargs["strides"])
    elif name == "segnet":
        from .segnet import SegNet

        network = SegNet(in_channels, out_channels, **kwargs)
        multiple = network.divisor
    else:
        raise UserError(f"model {name!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    return PadToMultiple(network, multiple)


def parameter_count(state_dict: dict[str, torch.Tensor]) -> int:
    """The number of parameters of a network from its state dict alone (batch norm's running statistics
    left out), so that ``info`` need not import MONAI to build the network."""
    return sum(t.numel() for key, t in state_dict.items() if key.rsplit(".", 1)[-1] not in _BUFFERS)
