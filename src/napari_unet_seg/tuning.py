"""Post-processing chosen on validation data: the probability threshold, hole filling, keeping the largest
object, and test-time augmentation, each kept only when it raises the mean validation Dice.

After training, :func:`choose_postprocessing_steps` predicts each validation image once plainly and once
with test-time augmentation, scores every combination of :data:`THRESHOLDS` (binary models) and
post-processing variants on it, and returns the best as ``SegmentationModel.postprocess``, which
:func:`~napari_unet_seg.inference.predict_steps` (so ``predict``, ``evaluate`` and the widgets) then
applies unless told otherwise. The plain prediction (threshold 0.5, nothing else) is kept unless a choice
beats it by :data:`MIN_GAIN`; test-time augmentation, which costs 4x (images) or 8x (volumes) the time,
only when it adds :data:`TTA_GAIN` on top. Keeping the largest object is tried where the plan proposed it
(one whole object per image, e.g. a lesion), hole filling for every binary or multi-class model.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from .events import Message, drain, messages_only
from .metrics import segmentation_metrics
from .model_file import SegmentationModel
from .postprocessing import CHOICES, postprocess

__all__ = ["THRESHOLDS", "MIN_GAIN", "TTA_GAIN", "choose_postprocessing", "choose_postprocessing_steps",
           "describe_postprocessing"]

#: Foreground probability thresholds tried for a binary model.
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
#: The least gain in mean validation Dice for a threshold or post-processing other than the plain one.
MIN_GAIN = 0.002
#: The least further gain for test-time augmentation (4-8x the prediction time).
TTA_GAIN = 0.005


def _variants(keep_largest: bool) -> list[dict[str, bool]]:
    variants = [{"keep_largest": False, "fill_holes": False}, {"keep_largest": False, "fill_holes": True}]
    return variants + ([{"keep_largest": True, "fill_holes": True}] if keep_largest else [])


def _labels(probabilities: np.ndarray, num_classes: int, threshold: float) -> np.ndarray:
    if num_classes == 2:
        return (probabilities > threshold).astype(np.uint8)
    return probabilities.argmax(axis=0).astype(np.uint8)


def _pair_scores(probabilities: np.ndarray, truth: np.ndarray, num_classes: int, variants: list[dict],
                 spatial_dims: int) -> dict[tuple, float]:
    """Dice of one validation image for every ``(threshold, variant index)``."""
    thresholds = THRESHOLDS if num_classes == 2 else (CHOICES["threshold"],)
    scores = {}
    for threshold in thresholds:
        labels = _labels(probabilities, num_classes, threshold)
        for index, variant in enumerate(variants):
            processed = postprocess(labels, **variant, spatial_dims=spatial_dims)
            scores[threshold, index] = segmentation_metrics(processed, truth, num_classes)["dice"]
    return scores


def _predicted(model: SegmentationModel, pair: Any, tta: bool, device: str, cancel: Any):
    from .inference import predict_steps

    steps = predict_steps(model, pair.image, device=device, return_probabilities=True, tta=tta, threshold=0.5,
                          keep_largest=False, fill_holes=False, cancel=cancel, progress=False)
    return (yield from messages_only(steps)).probabilities


def choose_postprocessing_steps(model: SegmentationModel, pairs: Sequence[Any], *, device: str = "cpu",
                                keep_largest: bool = False, cancel: Any = None
                                ) -> Generator[Message, None, dict[str, Any]]:
    """The post-processing that scores best on validation ``pairs`` (objects with ``image`` and ``truth``,
    as :class:`~napari_unet_seg.training.ValPair`): a dict of :data:`~napari_unet_seg.postprocessing.CHOICES`
    and ``evidence`` (mean validation Dice of the plain prediction, of the choice without and with
    test-time augmentation, and the number of images). ``keep_largest``: also try keeping only the largest
    object. Yields the messages of the predictions; an empty ``pairs``, or one whose masks hold no
    foreground (where any threshold that predicts nothing scores a perfect Dice), returns ``{}``."""
    if not pairs:
        return {}
    if not any(np.any(np.asarray(pair.truth) > 0) for pair in pairs):
        yield Message("no validation mask holds foreground: nothing to choose the threshold and post-processing "
                      "on; keeping threshold 0.5 and none", "warning")
        return {}
    from .inference import working_copy

    variants = _variants(keep_largest)
    spatial_dims = 3 if model.spatial_dims == 3 else 2
    totals: dict[tuple, float] = {}
    model = working_copy(model, device)
    for pair in pairs:
        for tta in (False, True):
            probs = yield from _predicted(model, pair, tta, str(device), cancel)
            for (threshold, index), dice in _pair_scores(probs, pair.truth, model.num_classes, variants,
                                                         spatial_dims).items():
                totals[tta, threshold, index] = totals.get((tta, threshold, index), 0.0) + dice
    means = {key: total / len(pairs) for key, total in totals.items()}
    return _chosen(means, variants, len(pairs))


def choose_postprocessing(model: SegmentationModel | str, images: str, masks: str, *, device: str = "cpu",
                          keep_largest: bool = False) -> dict[str, Any]:
    """:func:`choose_postprocessing_steps` on the pairs of two folders (e.g. a finished run's validation
    images), read as training reads its validation pairs. Store the result in ``model.postprocess``."""
    from .model_file import load_model
    from .pairing import pair_files
    from .training import _read_pairs, _val_pairs

    model = load_model(model)
    pairs = _val_pairs(_read_pairs(pair_files(images, masks)), model.num_classes, model.in_channels,
                       model.spatial_dims)
    return drain(choose_postprocessing_steps(model, pairs, device=device, keep_largest=keep_largest))


def _chosen(means: dict[tuple, float], variants: list[dict], count: int) -> dict[str, Any]:
    """The simplest best choice: plain unless beaten by :data:`MIN_GAIN`, TTA only for :data:`TTA_GAIN` more."""
    plain_key = (False, CHOICES["threshold"], 0)
    plain = means[plain_key]
    best = max((k for k in means if not k[0]), key=lambda k: (means[k], k == plain_key))
    if means[best] - plain < MIN_GAIN:
        best = plain_key
    best_tta = max((k for k in means if k[0]), key=means.get)
    if means[best_tta] - means[best] >= TTA_GAIN:
        best = best_tta
    tta, threshold, index = best
    return {"threshold": float(threshold), "tta": bool(tta), **variants[index],
            "evidence": {"images": count, "plain_dice": round(plain, 4), "chosen_dice": round(means[best], 4),
                         "best_dice_without_tta": round(max(v for k, v in means.items() if not k[0]), 4),
                         "best_dice_with_tta": round(means[best_tta], 4)}}


def describe_postprocessing(chosen: dict[str, Any]) -> str:
    """One line: what a model's ``postprocess`` applies and the validation evidence for it."""
    if not chosen:
        return "threshold 0.5, no post-processing (not chosen on validation data)"
    parts = [f"threshold {chosen.get('threshold', CHOICES['threshold']):g}"]
    parts += [text for name, text in (("keep_largest", "keep the largest object"), ("fill_holes", "fill holes"),
                                      ("tta", "test-time augmentation")) if chosen.get(name)]
    evidence = chosen.get("evidence", {})
    if evidence:
        parts.append(f"(validation Dice {evidence['plain_dice']:.4f} plain -> {evidence['chosen_dice']:.4f} on "
                     f"{evidence['images']} image(s); best with test-time augmentation "
                     f"{evidence['best_dice_with_tta']:.4f})")
    return ", ".join(parts[:-1]) + " " + parts[-1] if evidence else ", ".join(parts)
