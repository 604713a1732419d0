"""Networks prepared for inference: a copy in eval mode with batch norm folded into the convolutions.

In eval mode a batch norm after a convolution is an affine map per channel, so torch's
``fuse_conv_bn_eval`` folds it into the convolution's weights and bias: one pass over the feature map
fewer per layer, the same output up to rounding. Pairs are found by structure, not by tracing: a
convolution followed, inside an ``nn.Sequential``, by a batch norm (itself or as the first layer of the
next block, as MONAI's ``Convolution``/``ADN`` and our SegNet build them), so the convolution's output
goes only to that norm. (``torch.fx`` tracing would find more patterns but silently drops MONAI
``BasicUNet``'s skip connections: ``torch.jit.isinstance`` is false for a tracing proxy.)

``compile=True`` adds ``torch.compile`` (inductor, weights frozen), eager again if compiling fails. Off by
default: on the 2-core CPU it took 90-150 s for a U-Net, for 1.0-1.5x the eager speed afterwards
(docs/performance.md), a loss for anything short of hundreds of images.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["CompiledOrEager", "channels_last_format", "fold_batch_norms", "inference_network"]


def _is_sequential(module: nn.Module) -> bool:
    """An ``nn.Sequential`` (or subclass) that keeps its forward: each child feeds only the next."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _edge(parent: nn.Module, name: str, last: bool) -> tuple[nn.Module, str]:
    """``(holder, name)`` of the layer that runs first (``last``: last) in ``parent``'s child ``name``."""
    child = parent._modules[name]
    while _is_sequential(child) and len(child):
        parent, name = child, list(child._modules)[-1 if last else 0]
        child = parent._modules[name]
    return parent, name


def _pairs(network: nn.Module) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """``(conv holder, conv name, norm holder, norm name)`` of each convolution fed straight into a batch norm."""
    found = []
    for module in network.modules():
        if not _is_sequential(module):
            continue
        names = list(module._modules)
        for before, after in zip(names, names[1:]):
            conv_at, norm_at = _edge(module, before, last=True), _edge(module, after, last=False)
            conv, norm = conv_at[0]._modules[conv_at[1]], norm_at[0]._modules[norm_at[1]]
            if (isinstance(conv, _ConvNd) and isinstance(norm, _BatchNorm) and norm.running_mean is not None
                    and norm.num_features == conv.out_channels):
                found.append((*conv_at, *norm_at))
    return found


def fold_batch_norms(network: nn.Module) -> int:
    """Fold, in place, every batch norm that directly follows a convolution into it (see the module's
    docstring); the norm becomes ``nn.Identity``. ``network`` must be in eval mode. Returns how many."""
    if network.training:
        raise ValueError("batch norm can be folded only in eval mode; call network.eval() first")
    pairs = _pairs(network)
    for conv_holder, conv_name, norm_holder, norm_name in pairs:
        conv, norm = conv_holder._modules[conv_name], norm_holder._modules[norm_name]
        fused = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, _ConvTransposeNd))
        setattr(conv_holder, conv_name, fused)
        setattr(norm_holder, norm_name, nn.Identity())
    return len(pairs)


class CompiledOrEager(nn.Module):
    """``network`` through ``torch.compile``; after one failure (no compiler, an unsupported operation)
    a warning, and eager from then on."""

    def __init__(self, network: nn.Module, **options) -> None:
        super().__init__()
        self.network = network
        self.compiled = torch.compile(network, **options)

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly instead
                warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                              "running the network eagerly", stacklevel=2)
                self.compiled = None
        return self.network(*args, **kwargs)


def channels_last_format(network: nn.Module) -> torch.memory_format:
    """``channels_last_3d`` for a network of volumes (5D convolution weights), else ``channels_last``."""
    volumes = any(isinstance(m, _ConvNd) and m.weight.dim() == 5 for m in network.modules())
    return torch.channels_last_3d if volumes else torch.channels_last


def inference_network(network: nn.Module, device: torch.device | str | None = None, *,
                      channels_last: bool = True, compile: bool = False) -> nn.Module:
    """A copy of ``network`` for inference on ``device`` (default: where it is): eval mode, batch norm
    folded into the convolutions (:func:`fold_batch_norms`), no gradients, channels-last weights when
    ``channels_last`` (:func:`channels_last_format`: NDHWC for 3D networks); with ``compile``, wrapped in :class:`CompiledOrEager`. ``network`` itself is not changed.

    Example:
        >>> from napari_unet_seg.models import build_network, network_kwargs
        >>> net = build_network("segnet", 1, 1, **network_kwargs("segnet", width=0.25))
        >>> fast = inference_network(net, "cpu")
        >>> sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        0
    """
    prepared = copy.deepcopy(network).eval().requires_grad_(False)
    fold_batch_norms(prepared)
    memory_format = channels_last_format(prepared) if channels_last else torch.contiguous_format
    prepared = prepared.to(device, memory_format=memory_format)
    return CompiledOrEager(prepared, options={"freezing": True}) if compile else prepared
