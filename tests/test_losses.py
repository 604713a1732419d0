import pytest
import torch

from napari_unet_seg.errors import UserError
from napari_unet_seg.losses import LOSS_NAMES, SoftBCEWithLogitsLoss, build_loss


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_binary_losses_prefer_the_right_answer(name):
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 6.0  # confident and right
    bad = -good
    loss = build_loss(name, 2)
    good_value, bad_value = loss(good, target), loss(bad, target)
    assert good_value.ndim == 0 and torch.isfinite(good_value)
    assert good_value < bad_value


@pytest.mark.parametrize("name", ["ce", "dice", "dicece", "focal"])
def test_multiclass_losses(name):
    target = torch.randint(0, 3, (2, 1, 8, 8))
    good = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 8 - 4
    loss = build_loss(name, 3)
    assert loss(good, target.float()) < loss(-good, target.float())


def test_loss_gradients_flow():
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    build_loss("dicece", 2)(logits, torch.ones(1, 1, 4, 4)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_soft_bce_matches_hand_value():
    # With smoothing s, target 1 becomes 1 - s/2; at logit 0 the loss is log 2 whatever the target.
    loss = SoftBCEWithLogitsLoss(0.1)
    assert loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).item() == pytest.approx(0.693147, abs=1e-5)
    # Its minimum is at sigmoid(logit) = 0.95, not at 1.
    logits = torch.linspace(0, 6, 601)
    values = torch.stack([loss(v.view(1, 1, 1, 1), torch.ones(1, 1, 1, 1)) for v in logits])
    best = torch.sigmoid(logits[values.argmin()])
    assert best.item() == pytest.approx(0.95, abs=0.01)


def test_binary_only_losses_refuse_multiclass():
    with pytest.raises(UserError, match="use ce, dice, dicece or focal"):
        build_loss("bce", 4)
    with pytest.raises(UserError, match="unknown"):
        build_loss("hinge", 2)
