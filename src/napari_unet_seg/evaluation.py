"""Evaluation: a model against a folder of image/mask pairs, or label arrays against ground truth."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import numpy as np

from .dataset import mask_to_classes
from .errors import UserError
from .events import Tiles, drain
from .image_io import read_image, read_mask
from .metrics import mean_metrics, segmentation_metrics
from .model_file import SegmentationModel, load_model
from .pairing import pair_files

__all__ = ["evaluate", "evaluate_steps", "compare_labels"]


def compare_labels(prediction: np.ndarray, truth: np.ndarray, num_classes: int | None = None) -> dict:
    """Dice, IoU, accuracy, precision and recall of a label array against ground truth.

    ``num_classes`` defaults to binary when both arrays hold at most labels 0 and 1 (or any label > 0
    is foreground), else to ``max label + 1`` with per-class scores.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise UserError(f"the labels ({prediction.shape}) and the ground truth ({truth.shape}) differ in shape; "
                        "pick layers of the same size")
    if num_classes is None:
        top = int(max(prediction.max(initial=0), truth.max(initial=0)))
        num_classes = 2 if top <= 1 else top + 1
    return segmentation_metrics(prediction, truth, num_classes)


def evaluate_steps(model: SegmentationModel | str | os.PathLike, images: str | os.PathLike,
                   masks: str | os.PathLike, *, skip_unpaired: bool = False,
                   **predict_options: Any) -> Generator[Tiles, None, dict]:
    """Predict every image of the folder pairs and score it; yields one :class:`Tiles` per image."""
    from .inference import predict

    model = load_model(model)
    pairs = pair_files(images, masks, skip_unpaired=skip_unpaired)
    per_image = []
    for index, pair in enumerate(pairs, start=1):
        image = read_image(pair.image)
        truth = mask_to_classes(read_mask(pair.mask), model.num_classes, pair.mask.name)
        labels = predict(model, image, **predict_options)
        if labels.shape != truth.shape:
            raise UserError(f"{pair.image.name}: image is {labels.shape} but its mask is {truth.shape}; "
                            "they must have the same size")
        per_image.append({"name": pair.image.name, **segmentation_metrics(labels, truth, model.num_classes)})
        yield Tiles(index, len(pairs))
    return {**mean_metrics(per_image), "count": len(per_image), "per_image": per_image}


def evaluate(model: SegmentationModel | str | os.PathLike, images: str | os.PathLike, masks: str | os.PathLike,
             *, on_event=None, **options: Any) -> dict:
    """Score a model on folders of image/mask pairs.

    Returns a dict with the means ``dice``, ``iou``, ``accuracy``, ``precision``, ``recall`` (and
    ``per_class`` for multi-class models), ``count`` and ``per_image`` (one dict per image, with
    ``name``). ``options`` go to :func:`~napari_unet_seg.inference.predict` (``device``, ``tile``, ...).
    """
    return drain(evaluate_steps(model, images, masks, **options), on_event)
