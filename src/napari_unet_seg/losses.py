"""Loss functions by name, for binary (one logit channel) and multi-class (one per class) outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

__all__ = ["LOSS_NAMES", "SoftBCEWithLogitsLoss", "build_loss"]

from .config import LOSSES as LOSS_NAMES  # noqa: E402  (the choice lists live in config)


class SoftBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on logits with label smoothing: targets ``t`` become ``t (1 - s) + s / 2``.

    The loss of segmentation_models_pytorch's ``SoftBCEWithLogitsLoss`` (``smooth_factor``), which
    MONAI lacks.
    """

    def __init__(self, smooth_factor: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= smooth_factor < 1.0:
            raise ValueError(f"smooth_factor must be in [0, 1), got {smooth_factor}")
        self.smooth_factor = smooth_factor

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = target * (1.0 - self.smooth_factor) + 0.5 * self.smooth_factor
        return F.binary_cross_entropy_with_logits(logits, soft)


class _TargetAsIndex(nn.Module):
    """Adapts a loss that wants class indices ``(N, H, W)`` to targets given as ``(N, 1, H, W)``."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target[:, 0].long())


def build_loss(name: str, num_classes: int = 2) -> nn.Module:
    """The loss ``name`` for logits ``(N, C, H, W)`` and targets ``(N, 1, H, W)`` holding class ids.

    Binary tasks (``num_classes == 2``) have one logit channel; ``ce`` there is plain BCE.
    """
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    binary = num_classes == 2
    if name not in LOSS_NAMES:
        raise UserError(f"loss {name!r} is unknown; use one of {', '.join(LOSS_NAMES)}")
    if binary:
        if name in ("bce", "ce"):
            return nn.BCEWithLogitsLoss()
        if name == "softbce":
            return SoftBCEWithLogitsLoss(0.1)
        if name == "dice":
            return DiceLoss(sigmoid=True)
        if name == "dicece":
            return DiceCELoss(sigmoid=True)
        return FocalLoss(gamma=2.0)
    if name in ("bce", "softbce"):
        raise UserError(f"loss {name!r} is for two classes; with --classes {num_classes} use ce, dice, dicece or focal")
    if name == "ce":
        return _TargetAsIndex(nn.CrossEntropyLoss())
    if name == "dice":
        return DiceLoss(softmax=True, to_onehot_y=True)
    if name == "dicece":
        return DiceCELoss(softmax=True, to_onehot_y=True)
    return FocalLoss(gamma=2.0, to_onehot_y=True, use_softmax=True)
