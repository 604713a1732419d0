"""Network registry: ``build_network(name, in_channels, out_channels, **kwargs)`` for every model name.

``unet``, ``basic_unet`` and ``attention_unet`` are MONAI's; ``segnet`` is ours (:mod:`.segnet`). Every
network is wrapped in :class:`PadToMultiple`, so it takes any input size and returns the same size.
Networks are 2D by default; ``spatial_dims=3`` in :func:`network_kwargs` makes the 3D ones, whose
pooling follows the voxel spacing the nnU-Net way (:func:`pooling_strides`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MODELS as MODEL_NAMES  # the choice lists live in config
from ..errors import UserError

__all__ = ["MODEL_NAMES", "PadToMultiple", "build_network", "network_kwargs", "parameter_count", "pooling_strides",
           "spatial_dims_of"]


#: The buffers (not parameters) a network's state dict holds: batch norm's running statistics.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class PadToMultiple(nn.Module):
    """Pads each spatial axis up to a multiple of ``multiple`` (one int, or one per axis; and at least two
    of them, so the deepest level keeps more than one pixel for its normalization), by reflection, and
    crops the output back."""

    def __init__(self, network: nn.Module, multiple: int | Sequence[int]) -> None:
        super().__init__()
        self.network = network
        self.multiple = multiple
        self.multiples = [int(multiple)] if isinstance(multiple, int) else [int(m) for m in multiple]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # written for TorchScript: loops, typed lists
        shape = x.shape[2:]
        count = len(shape)
        multiples = self.multiples if len(self.multiples) == count else [self.multiples[0]] * count
        pads: list[int] = []
        reflect, padded = True, False
        for axis in range(count - 1, -1, -1):  # F.pad takes the last axis first
            m, extent = multiples[axis], shape[axis]
            pad = max(-extent % m, 2 * m - extent) if m > 1 else 0
            pads += [0, pad]
            reflect, padded = reflect and pad < extent, padded or pad > 0
        if not padded:
            return self.network(x)
        y = self.network(F.pad(x, pads, mode="reflect" if reflect else "replicate"))
        for axis in range(count):
            y = y.narrow(2 + axis, 0, shape[axis])
        return y


def pooling_strides(spacing: Sequence[float], levels: int) -> list[list[int]]:
    """The stride of each of ``levels`` downsamplings per axis, for voxels of ``spacing`` (the nnU-Net
    rule): an axis is halved only while its spacing is less than twice the finest one, so a coarse axis
    (thick sections) keeps its resolution until the others have caught up.

    Example:
        >>> pooling_strides((1.75, 0.8, 0.8), 4)
        [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    """
    spacing = [float(s) for s in spacing]
    if not spacing or min(spacing) <= 0:
        raise UserError(f"voxel spacing {tuple(spacing)} must be positive numbers")
    strides = []
    for _ in range(levels):
        finest = min(spacing)
        level = [2 if s / finest < 2 else 1 for s in spacing]
        strides.append(level)
        spacing = [s * k for s, k in zip(spacing, level)]
    return strides


def spatial_dims_of(kwargs: dict[str, Any]) -> int:
    """2 or 3: the spatial dimensions of a network from its :func:`network_kwargs` (2 when not stored)."""
    return int(kwargs.get("spatial_dims", 2))


def _multiples(strides: Sequence, dims: int) -> list[int]:
    """The size each axis must be a multiple of: the product of its strides."""
    out = [1] * dims
    for level in strides:
        for axis, k in enumerate([level] * dims if isinstance(level, int) else level):
            out[axis] *= int(k)
    return out


def _widths(base: tuple[int, ...], width: float) -> tuple[int, ...]:
    return tuple(max(4, int(round(c * width))) for c in base)


def network_kwargs(name: str, width: float = 1.0, spatial_dims: int = 2, spacing: Sequence[float] | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """The full constructor arguments of network ``name`` (stored in model files to rebuild it).

    ``spatial_dims=3`` makes a 3D network; ``spacing`` (one value per axis, e.g. ``(50, 4, 4)`` nm) sets
    its pooling (:func:`pooling_strides`; isotropic when None). ``basic_unet`` pools every axis alike and
    refuses anisotropic spacing.
    """
    if spatial_dims not in (2, 3):
        raise UserError(f"spatial dims {spatial_dims!r}: use 2 or 3")
    levels = 5 if name == "segnet" else 4
    spacing = tuple(spacing) if spacing is not None else (1.0,) * spatial_dims
    if len(spacing) != spatial_dims:
        raise UserError(f"voxel spacing {spacing} has {len(spacing)} values; give one per axis ({spatial_dims})")
    strides: list = pooling_strides(spacing, levels)
    if all(k == 2 for level in strides for k in level):
        strides = [2] * levels
    # Batch norm (not MONAI's default instance norm) for the U-Nets: in eval mode it does not depend on
    # the tile's own statistics, so tiled prediction matches whole-image prediction.
    if name == "unet":
        kwargs = {"channels": _widths((16, 32, 64, 128, 256), width), "strides": strides, "num_res_units": 2,
                  "norm": "batch"}
    elif name == "basic_unet":
        if strides != [2] * levels:
            raise UserError(f"basic_unet pools every axis alike and cannot follow voxel spacing {spacing}; use "
                            "--model unet or attention_unet for anisotropic volumes")
        kwargs = {"features": _widths((32, 32, 64, 128, 256, 32), width), "norm": "batch"}
    elif name == "attention_unet":
        kwargs = {"channels": _widths((16, 32, 64, 128, 256), width), "strides": strides}
    elif name == "segnet":
        kwargs = {"features": _widths((64, 128, 256, 512, 512), width)}
        if strides != [2] * levels:
            kwargs["strides"] = strides
    else:
        raise UserError(f"model {name!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    if spatial_dims == 3:
        kwargs["spatial_dims"] = 3
    kwargs.update(overrides)
    return {k: _plain(v) for k, v in kwargs.items()}


def _plain(value: Any) -> Any:
    """Tuples as lists, all the way down (the form JSON gives back)."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def build_network(name: str, in_channels: int, out_channels: int, **kwargs: Any) -> PadToMultiple:
    """Build network ``name`` (see :data:`MODEL_NAMES`); ``kwargs`` as from :func:`network_kwargs` (2D when
    they hold no ``spatial_dims``).

    Example:
        >>> net = build_network("segnet", 3, 1, **network_kwargs("segnet", width=0.25))
        >>> net(torch.zeros(1, 3, 37, 50)).shape
        torch.Size([1, 1, 37, 50])
        >>> net = build_network("unet", 1, 1, **network_kwargs("unet", 0.25, spatial_dims=3, spacing=(50, 4, 4)))
        >>> net(torch.zeros(1, 1, 5, 40, 33)).shape
        torch.Size([1, 1, 5, 40, 33])
    """
    kwargs = dict(kwargs or network_kwargs(name))
    dims = int(kwargs.pop("spatial_dims", 2))
    if name == "unet":
        from monai.networks.nets.unet import UNet

        network = UNet(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
        multiple = _multiples(kwargs["strides"], dims)
    elif name == "basic_unet":
        from monai.networks.nets.basic_unet import BasicUNet

        network = BasicUNet(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
        multiple = [16] * dims
    elif name == "attention_unet":
        from monai.networks.nets.attentionunet import AttentionUnet

        network = AttentionUnet(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
        multiple = _multiples(kwargs["strides"], dims)
    elif name == "segnet":
        from .segnet import SegNet

        network = SegNet(in_channels, out_channels, spatial_dims=dims, **kwargs)
        multiple = network.divisor
    else:
        raise UserError(f"model {name!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    return PadToMultiple(network, multiple[0] if len(set(multiple)) == 1 else multiple)


def parameter_count(state_dict: dict[str, torch.Tensor]) -> int:
    """The number of parameters of a network from its state dict alone (batch norm's running statistics
    left out), so that ``info`` need not import MONAI to build the network."""
    return sum(t.numel() for key, t in state_dict.items() if key.rsplit(".", 1)[-1] not in _BUFFERS)
