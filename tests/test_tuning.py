"""The threshold and post-processing chosen on validation images (napari_unet_seg.tuning)."""

import numpy as np
import pytest
import torch

from napari_unet_seg.events import drain
from napari_unet_seg.inference import predict
from napari_unet_seg.model_file import SegmentationModel, load_model, save_model
from napari_unet_seg.training import ValPair
from napari_unet_seg.tuning import MIN_GAIN, TTA_GAIN, _chosen, choose_postprocessing_steps


class _Pixelwise(torch.nn.Module):
    """Logits ``scale * (x - shift)``: a network whose foreground probability is a function of the pixel."""

    def __init__(self, scale: float = 8.0, shift: float = 0.0) -> None:
        super().__init__()
        self.scale, self.shift = torch.nn.Parameter(torch.tensor(scale)), torch.nn.Parameter(torch.tensor(shift))

    def forward(self, x):
        return self.scale * (x - self.shift)


def _model(shift: float = 0.0) -> SegmentationModel:
    normalization = {"method": "none"}
    return SegmentationModel(_Pixelwise(shift=shift), {"name": "unet", "kwargs": {}}, 1, 2, normalization)


def _pair(seed: int) -> ValPair:
    """A bright square with a darker rim (the truth is the whole square) and a bright speck outside it."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 0.2, (48, 48)).astype(np.float32)
    image[10:30, 10:30] = 0.9
    image[10:30, 10] = 0.45  # the rim: foreground whose probability is below 0.5
    image[18:21, 18:21] = 0.2  # a dark hole inside the object
    image[40:43, 40:43] = 0.9  # a speck: not in the truth
    truth = np.zeros((48, 48), np.uint8)
    truth[10:30, 10:30] = 1
    return ValPair(f"pair{seed}", image, truth)


def test_chooses_a_lower_threshold_keep_largest_and_fill_holes_when_they_raise_dice():
    model, pairs = _model(shift=0.5), [_pair(seed) for seed in range(3)]
    plain = np.mean([(predict(model, p.image, device="cpu") == p.truth).mean() for p in pairs])
    chosen = drain(choose_postprocessing_steps(model, pairs, device="cpu", keep_largest=True))
    assert chosen["threshold"] < 0.5 and chosen["keep_largest"] and chosen["fill_holes"]
    evidence = chosen["evidence"]
    assert evidence["images"] == 3 and evidence["chosen_dice"] >= evidence["plain_dice"] + MIN_GAIN
    assert plain < 1.0
    # stored in the file, predict applies it: the rim, the hole and the speck come out right
    model.postprocess = chosen
    for pair in pairs:
        assert np.array_equal(predict(model, pair.image, device="cpu"), pair.truth)
        plain_labels = predict(model, pair.image, device="cpu", threshold=0.5, keep_largest=False, fill_holes=False)
        assert not np.array_equal(plain_labels, pair.truth)


def test_keep_largest_is_tried_only_when_asked():
    model, pairs = _model(shift=0.5), [_pair(0)]
    chosen = drain(choose_postprocessing_steps(model, pairs, device="cpu", keep_largest=False))
    assert chosen["keep_largest"] is False


def test_masks_without_foreground_choose_nothing():
    from napari_unet_seg.events import Message

    empty = [ValPair(f"empty{seed}", pair.image, np.zeros_like(pair.truth)) for seed, pair in
             ((seed, _pair(seed)) for seed in range(2))]
    steps = choose_postprocessing_steps(_model(), empty, device="cpu")
    messages = []
    try:
        while True:
            messages.append(next(steps))
    except StopIteration as done:
        assert done.value == {}
    assert any(isinstance(m, Message) and "no validation mask holds foreground" in m.text for m in messages)
    assert drain(choose_postprocessing_steps(_model(shift=0.5), empty[:1] + [_pair(3)], device="cpu"))


def test_a_model_already_right_keeps_the_plain_choice():
    model = _model(shift=0.3)
    image = np.zeros((32, 32), np.float32)
    image[8:24, 8:24] = 1.0
    pairs = [ValPair("square", image, (image > 0.5).astype(np.uint8))]
    chosen = drain(choose_postprocessing_steps(model, pairs, device="cpu", keep_largest=True))
    assert (chosen["threshold"], chosen["tta"], chosen["keep_largest"], chosen["fill_holes"]) == (0.5, False, False,
                                                                                                False)
    assert chosen["evidence"]["plain_dice"] == 1.0
    assert drain(choose_postprocessing_steps(model, [], device="cpu")) == {}


def test_tta_needs_its_own_margin():
    plain = (False, 0.5, 0)
    base = {plain: 0.80, (False, 0.4, 0): 0.80 + MIN_GAIN / 2, (True, 0.5, 0): 0.80 + TTA_GAIN / 2}
    chosen = _chosen(base, [{"keep_largest": False, "fill_holes": False}], 2)
    assert (chosen["threshold"], chosen["tta"]) == (0.5, False)  # neither gain is enough
    better = {**base, (True, 0.45, 0): 0.80 + TTA_GAIN * 1.5}
    chosen = _chosen(better, [{"keep_largest": False, "fill_holes": False}], 2)
    assert (chosen["threshold"], chosen["tta"]) == (0.45, True)


def test_multi_class_models_keep_argmax():
    network = torch.nn.Conv2d(1, 3, 1)
    with torch.no_grad():
        network.weight[:] = torch.tensor([-4.0, 0.0, 4.0])[:, None, None, None]
        network.bias[:] = torch.tensor([2.0, 0.0, -2.0])
    model = SegmentationModel(network, {"name": "unet", "kwargs": {}}, 1, 3,
                              {"method": "none"})
    image = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    truth = predict(model, image, device="cpu")
    chosen = drain(choose_postprocessing_steps(model, [ValPair("ramp", image, truth)], device="cpu"))
    assert chosen["threshold"] == 0.5 and chosen["evidence"]["plain_dice"] == pytest.approx(1.0)


def test_the_choice_is_stored_in_the_model_file_and_checked_on_load(tiny_model, tmp_path):
    from napari_unet_seg.errors import UserError

    model = load_model(tiny_model)
    model.postprocess = {"threshold": 0.4, "tta": False, "keep_largest": True, "fill_holes": True,
                         "evidence": {"images": 2, "plain_dice": 0.8, "chosen_dice": 0.85}}
    assert load_model(save_model(tmp_path / "m.pt", model)).postprocess == model.postprocess
    model.postprocess = {"threshold": 1.5}
    with pytest.raises(UserError, match="postprocess.threshold is 1.5, expected a number between 0 and 1"):
        load_model(save_model(tmp_path / "bad.pt", model))
    model.postprocess = {"fill_holes": "yes"}
    with pytest.raises(UserError, match="postprocess.fill_holes"):
        load_model(save_model(tmp_path / "bad.pt", model))
