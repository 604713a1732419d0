"""Evaluation: a model against a folder of image/mask pairs, or label arrays against ground truth.

What is compared (``kind``) follows from the model or the caller, then from the ground truth:

- ``multiclass`` when ``num_classes > 2`` is given (by the model, or the caller): labels are class ids;
- else ``instances`` when the ground truth holds more than two distinct whole numbers (one id per object):
  foreground (any id > 0) against background, plus object precision/recall/F1 at IoU > 0.5; the
  prediction's objects are its ids when it holds more than one, else its connected components;
- else ``binary``: any value > 0 is foreground (0/1, 0/255, 0/65535 and bool masks alike).

A volume ``(Z, Y, X)`` (a multi-page TIFF, its mask a stack of the same shape) is scored as one: one row
per volume, its objects matched in 3D (connected components 26-connected, as :mod:`.instances` numbers
them), whether the model predicted it as a volume (3D model) or slice by slice (2D model). The pooled
figures count every pixel (voxel) of every image (volume) together.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import mask_to_classes
from .errors import UserError, size_text
from .events import Tiles, drain
from .image_io import read_image_layout, read_mask, stated_spacing
from .metrics import confusion_matrix, dataset_metrics, object_counts, object_scores, scores_from_confusion
from .model_file import SegmentationModel, load_model
from .normalization import is_rgb
from .pairing import pair_files

__all__ = ["KINDS", "comparison_kind", "compare_labels", "evaluate", "evaluate_steps"]

#: The kinds of comparison (see the module's docstring).
KINDS = ("binary", "instances", "multiclass")


def comparison_kind(truth: np.ndarray, num_classes: int | None = None) -> str:
    """``multiclass`` when ``num_classes > 2``, else ``instances`` when ``truth`` holds more than two distinct
    whole numbers, else ``binary`` (also for fractional values, e.g. a soft mask: foreground is > 0)."""
    if num_classes is not None and num_classes > 2:
        return "multiclass"
    truth = np.asarray(truth)
    whole = not np.issubdtype(truth.dtype, np.floating) or bool(np.all(truth == np.round(truth)))
    return "instances" if whole and _many_ids(truth) else "binary"


def _many_ids(labels: np.ndarray) -> bool:
    """Whether ``labels`` holds more than one value besides 0 (a linear scan, no sort)."""
    ids = labels[labels != 0]
    return bool(ids.size) and bool((ids != ids.flat[0]).any())


def _objects(labels: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    return labels if _many_ids(labels) else label(labels > 0)


def _score(prediction: np.ndarray, truth: np.ndarray, kind: str, num_classes: int | None,
           objects: bool) -> tuple[dict, np.ndarray]:
    """(scores, confusion matrix) of one label array against its ground truth, compared as ``kind``;
    with ``objects`` (not for multi-class) also the object counts and scores."""
    if kind == "multiclass":
        high = int(max(prediction.max(initial=0), truth.max(initial=0)))
        if min(prediction.min(initial=0), truth.min(initial=0)) < 0 or high >= num_classes:
            raise UserError(f"the labels hold values up to {high}, outside the class ids 0..{num_classes - 1}; "
                            "check the number of classes, or compare them as binary masks")
        confusion = confusion_matrix(prediction, truth, num_classes)
    else:
        confusion = confusion_matrix(prediction > 0, truth > 0, 2)
    scores = {"kind": kind, **scores_from_confusion(confusion)}
    if objects and kind != "multiclass":
        scores.update(object_counts(_objects(prediction), _objects(truth)))
        scores.update(object_scores(scores))
    return scores, confusion


def _without_objects(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if not k.startswith("object")}


def compare_labels(prediction: np.ndarray, truth: np.ndarray, num_classes: int | None = None) -> dict:
    """Dice, IoU, accuracy, precision and recall of a label array against ground truth, and ``kind``.

    ``kind`` is ``binary``, ``instances`` (with ``object_precision``, ``object_recall``, ``object_f1``
    and the object counts) or ``multiclass`` (with ``per_class``), as the module's docstring says:
    multi-class only when ``num_classes > 2`` is given.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise UserError(f"the labels ({size_text(prediction.shape)}) and the ground truth ({size_text(truth.shape)}) "
                        "differ in shape; pick layers of the same size")
    kind = comparison_kind(truth, num_classes)
    return _score(prediction, truth, kind, num_classes, objects=kind == "instances")[0]


def _truth(mask: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """The ground truth of a mask file, 2D or a stack ``(Z, Y, X)``: class ids (multi-class), else its
    values (instance ids or 0/255 foreground)."""
    if mask.ndim == 3 and not is_rgb(mask):  # a volume, checked slice by slice
        classes = np.stack([mask_to_classes(plane, num_classes, f"{name} slice {z}") for z, plane in enumerate(mask)])
    else:
        classes = mask_to_classes(mask, num_classes, name)  # refuses colour, NaN, other shapes, bad class ids
    return classes if num_classes > 2 else (mask[..., 0] if is_rgb(mask) else mask)


def _spatial_shape(image: np.ndarray, colour: bool) -> tuple[int, ...]:
    return tuple(image.shape[:-1] if colour else image.shape)


def _prediction(model: SegmentationModel, path: Path, truth_shape: tuple[int, ...], options: dict) -> np.ndarray:
    """The model's labels of one image file, read as the layout its file states; an image whose shape is not
    its mask's, or whose colour does not match the model's, is refused before predicting (gray images stored
    as RGB, with three equal channels, count as gray)."""
    from .inference import predict, spacing_mismatch

    image, colour = read_image_layout(path)
    name = path.name
    shape, truth_shape = _spatial_shape(image, colour), tuple(truth_shape)
    if shape != truth_shape:
        raise UserError(f"{name}: image is {size_text(shape)} but its mask is {size_text(truth_shape)}; they must "
                        "have the same shape in every axis")
    rgb = image[..., :3] if colour and is_rgb(image) else None
    if rgb is not None and model.in_channels == 1 and not (rgb == rgb[..., :1]).all():
        raise UserError(f"{name}: is a colour (RGB) image but the model was trained on grayscale images; "
                        "use a model trained on colour images")
    mismatch = spacing_mismatch(model.spacing, stated_spacing(path))
    if mismatch:
        warnings.warn(f"{name}: {mismatch}", stacklevel=2)
    try:  # predict refuses the other way round (a gray image for a colour model)
        return predict(model, image, rgb=colour, **options)
    except UserError as error:
        raise UserError(f"{name}: {error}") from None


def evaluate_steps(model: SegmentationModel | str | os.PathLike, images: str | os.PathLike,
                   masks: str | os.PathLike, *, skip_unpaired: bool = False,
                   **predict_options: Any) -> Generator[Tiles, None, dict]:
    """Predict every image of the folder pairs and score it; yields one :class:`Tiles` per image.

    A volume ``(Z, Y, X)`` (multi-page TIFF) with a mask volume of the same shape is one row, scored in 3D;
    every row holds its ``shape``."""
    model = load_model(model)
    pairs = pair_files(images, masks, skip_unpaired=skip_unpaired)
    per_image = []
    confusion = np.zeros((max(model.num_classes, 2),) * 2, dtype=np.int64)
    for index, pair in enumerate(pairs, start=1):
        truth = _truth(read_mask(pair.mask), model.num_classes, pair.mask.name)
        labels = _prediction(model, pair.image, truth.shape, predict_options)
        # objects of binary masks too: kept when the folder turns out to hold instance masks
        scores, counts = _score(labels, truth, comparison_kind(truth, model.num_classes), model.num_classes,
                                objects=True)
        per_image.append({"name": pair.image.name, "shape": list(truth.shape), **scores})
        confusion += counts
        yield Tiles(index, len(pairs))
    kind = "multiclass" if model.num_classes > 2 else \
        ("instances" if any(row["kind"] == "instances" for row in per_image) else "binary")
    if kind == "binary":
        per_image = [_without_objects(row) for row in per_image]
    volumes = sum(len(row["shape"]) == 3 for row in per_image)
    return {"kind": kind, **dataset_metrics(per_image, confusion), "count": len(per_image), "volumes": volumes,
            "per_image": per_image}


def evaluate(model: SegmentationModel | str | os.PathLike, images: str | os.PathLike, masks: str | os.PathLike,
             *, on_event=None, **options: Any) -> dict:
    """Score a model on folders of image/mask pairs.

    Returns a dict with ``kind`` (see the module's docstring); the means over images of ``dice``, ``iou``,
    ``accuracy``, ``precision``, ``recall`` (and ``per_class`` for multi-class models);
    ``pooled_dice``, ``pooled_iou``, ``pooled_accuracy`` (all pixels together); ``thresholded_jaccard``
    (ISIC 2018); ``failed`` and ``failed_fraction`` (images with Dice below 0.5); for instance masks the
    pooled object counts and ``object_precision``, ``object_recall``, ``object_f1`` at IoU 0.5;
    ``count``, ``volumes`` (how many of the images are volumes ``(Z, Y, X)``) and ``per_image`` (one dict
    per image or volume, with ``name`` and ``shape``). ``options`` go to
    :func:`~napari_unet_seg.inference.predict` (``device``, ``tile``, ...).
    """
    return drain(evaluate_steps(model, images, masks, **options), on_event)
